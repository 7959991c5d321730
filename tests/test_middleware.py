"""Django's middleware with its hooks on the event loop (playground/middleware.py), as the ASGI
handler uvicorn serves loads it (playground/handler.py): the same checks and headers, without a
thread hop per hook, and Django's names kept in settings for `check --deploy`."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlencode

import pytest
from asgiref.sync import SyncToAsync
from django import db
from django.conf import settings
from django.core.signals import request_finished
from live import FORM

from playground import handler as handler_module
from playground import middleware
from playground.handler import INLINE, ASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)

HOOKS = {"process_request", "process_response", "process_view"}


def call(
    method: str, path: str, body: bytes = b"", headers=(), handler: ASGIHandler | None = None
) -> tuple[int, dict, bytes]:
    """One request through the handler, the way uvicorn calls it."""

    async def go():
        nonlocal handler
        handler = handler or ASGIHandler()
        incoming = [{"type": "http.request", "body": body, "more_body": False}]
        sent = []

        async def receive():
            if incoming:
                return incoming.pop()
            await asyncio.Event().wait()  # the disconnect that never comes

        async def send(message):
            sent.append(message)

        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), *headers],
            "client": ("127.0.0.1", 40000),
            "server": ("testserver", 80),
        }
        await handler(scope, receive, send)
        return sent

    sent = asyncio.run(go())
    start = sent[0]
    head = {}
    for name, value in start["headers"]:
        head.setdefault(name.decode().lower(), []).append(value.decode())
    return start["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


def test_settings_keep_djangos_names_and_the_handler_loads_the_inline_classes():
    assert set(INLINE) <= set(settings.MIDDLEWARE)
    handler = ASGIHandler()
    assert settings.MIDDLEWARE[0] == "django.middleware.security.SecurityMiddleware"
    # The CSRF check is the one view hook: awaited as it is, not sent to a thread.
    assert [hook.__qualname__.split(".")[0] for hook in handler._view_middleware] == ["inline"]


def test_async_requests_run_the_hooks_without_a_thread_hop(monkeypatch):
    hopped: list[str] = []
    original = SyncToAsync.__call__

    async def recording(self, *args, **kwargs):
        hopped.append(getattr(self.func, "__name__", ""))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", recording)
    status, head, _ = call("GET", "/")
    assert status == 200
    assert not HOOKS & set(hopped)
    # The hooks still ran: security, clickjacking, the session and the CSRF cookie.
    assert head["x-frame-options"] == ["DENY"]
    assert head["x-content-type-options"] == ["nosniff"]
    assert any(cookie.startswith("csrftoken=") for cookie in head["set-cookie"])


def test_a_post_without_csrf_token_is_refused():
    body = urlencode(FORM).encode()
    form = (b"content-type", b"application/x-www-form-urlencoded")
    status, _, _ = call("POST", "/generate", body, [form, (b"hx-request", b"true")])
    assert status == 403


def test_a_session_engine_that_does_io_keeps_djangos_thread_hop(settings):
    async def view(request):
        return None

    settings.SESSION_ENGINE = "django.contrib.sessions.backends.db"
    assert not middleware.SessionMiddleware(view).inline
    settings.SESSION_ENGINE = middleware.SIGNED_COOKIE_SESSIONS
    assert middleware.SessionMiddleware(view).inline
    assert not middleware.SessionMiddleware(lambda request: None).inline  # sync: Django's own


def test_requests_reuse_one_thread_and_still_close_its_database_connection(monkeypatch):
    made: list[object] = []
    real = handler_module.ThreadPoolExecutor

    def counting(*args, **kwargs):
        made.append(real(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(handler_module, "ThreadPoolExecutor", counting)
    finished: list[tuple[int, bool]] = []

    def on_finished(**kwargs):
        # On the thread where the view used the database: there Django's own receiver,
        # close_old_connections, closes the connection (the in-memory test database ignores
        # closing, so what is checked is where it runs).
        connection = db.connection
        opened_here = connection.connection is not None and (
            connection._thread_ident == threading.get_ident()
        )
        finished.append((threading.get_ident(), opened_here))

    request_finished.connect(on_finished)
    try:
        handler = ASGIHandler()
        for _ in range(3):
            status, _, _ = call("GET", "/", handler=handler)  # a sync view that reads the draft
            assert status == 200
    finally:
        request_finished.disconnect(on_finished)
    assert len(made) == 1, "one thread for three requests one after another"
    assert len({ident for ident, _ in finished}) == 1
    assert all(here for _, here in finished), "request_finished runs where the connection is"
    assert db.close_old_connections in request_finished._live_receivers(None)[0]
    for executor in made:
        executor.shutdown()


def test_requests_in_flight_together_each_get_a_thread_of_their_own():
    handler = ASGIHandler()
    entered = threading.Barrier(2, timeout=10)

    async def go():
        from asgiref.sync import sync_to_async

        async def one():
            async with handler_module.ThreadSensitiveContext(
                executor=handler._idle.pop()
                if handler._idle
                else handler_module.ThreadPoolExecutor(1)
            ):
                # Both requests' sync work is running at once: it would deadlock on one thread.
                return await sync_to_async(lambda: (entered.wait(), threading.get_ident())[1])()

        return await asyncio.gather(one(), one())

    first, second = asyncio.run(go())
    assert first != second
