"""Django's middleware with its hooks on the event loop (playground/middleware.py), as the ASGI
handler uvicorn serves loads it (playground/handler.py): the same checks and headers, without a
thread hop per hook, and Django's names kept in settings for `check --deploy`."""

from __future__ import annotations

import asyncio
import threading
from urllib.parse import urlencode

import pytest
from asgiref.sync import SyncToAsync
from django.conf import settings
from django.http import HttpResponse
from django.urls import path
from live import FORM

from playground import middleware
from playground.handler import INLINE, ASGIHandler

pytestmark = pytest.mark.django_db(transaction=True)

HOOKS = {"process_request", "process_response", "process_view"}


def call(method: str, path: str, body: bytes = b"", headers=()) -> tuple[int, dict, bytes]:
    """One request through the handler, the way uvicorn calls it."""
    sent = asyncio.run(send_through(ASGIHandler(), method, path, body, headers))
    start = sent[0]
    head = {}
    for name, value in start["headers"]:
        head.setdefault(name.decode().lower(), []).append(value.decode())
    return start["status"], head, b"".join(m.get("body", b"") for m in sent[1:])


async def send_through(handler, method: str, path: str, body: bytes = b"", headers=()) -> list:
    """One request through `handler`; the ASGI messages it sent."""
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


# Views for the request-thread test below: sync views run on the request's thread-sensitive
# executor, as the signals' receivers and `response.close` do.
SEEN: list[threading.Thread] = []
MEETING = threading.Barrier(2, timeout=10)


def where(request):
    SEEN.append(threading.current_thread())
    return HttpResponse("here")


def meet(request):
    SEEN.append(threading.current_thread())
    MEETING.wait()  # both requests' sync work at once, or a broken barrier
    return HttpResponse("met")


urlpatterns = [path("where", where), path("meet", meet)]


def test_request_threads_are_kept_and_requests_in_flight_never_share_one(settings):
    settings.ROOT_URLCONF = __name__
    SEEN.clear()
    assert call("GET", "/where")[2] == call("GET", "/where")[2] == b"here"
    # The second request's sync work ran on the thread the first one's did, not a new one.
    assert SEEN[0] is SEEN[1] is not threading.current_thread()

    async def both():
        handler = ASGIHandler()
        return await asyncio.gather(
            send_through(handler, "GET", "/meet"), send_through(handler, "GET", "/meet")
        )

    SEEN.clear()
    answers = asyncio.run(both())
    # Two requests at once: two threads (one would wait for the other at the barrier forever).
    assert [b"".join(m.get("body", b"") for m in sent[1:]) for sent in answers] == [b"met"] * 2
    assert SEEN[0] is not SEEN[1]
