"""The ASGI handler `playground/asgi.py` serves: Django's, loading the middleware of
`playground/middleware.py` in place of Django's classes of the same names.

`settings.MIDDLEWARE` keeps naming Django's classes because `manage.py check --deploy` looks for
those names (and skips its checks of HSTS, secure cookies and the like when it does not find
them). Only this handler, made once at startup, swaps in the subclasses whose hooks run on the
event loop. Tests with Django's clients, and WSGI, load Django's classes as named.

It also reuses the request threads. Django runs each request in a `ThreadSensitiveContext`, so
that the request's sync work (a sync view, the async ORM, the `request_started` and
`request_finished` signals, `response.close()`) shares one thread of its own; by default asgiref
starts that thread for the request's first hop and, at the end, a second thread to join it. Two
thread starts were the largest part of a streamed generation's CPU before its first token
(docs/PERFORMANCE.md). Here the context is given an idle single-thread executor from a free list
instead: still one thread per request in flight, each running one request's work at a time, but
started once and kept. Django's semantics are unchanged: `request_finished` still runs
`close_old_connections` on that thread at the end of each request, so with `CONN_MAX_AGE = 0`
no database connection outlives its request there.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers import asgi

# Idle request threads kept for reuse; a burst past this starts (and later drops) more.
IDLE_THREADS = 64

INLINE = {
    f"{module}.{name}": f"playground.middleware.{name}"
    for module, name in (
        ("django.middleware.security", "SecurityMiddleware"),
        ("django.contrib.sessions.middleware", "SessionMiddleware"),
        ("django.middleware.common", "CommonMiddleware"),
        ("django.middleware.csrf", "CsrfViewMiddleware"),
        ("django.contrib.auth.middleware", "AuthenticationMiddleware"),
        ("django.contrib.messages.middleware", "MessageMiddleware"),
        ("django.middleware.clickjacking", "XFrameOptionsMiddleware"),
    )
}


class ASGIHandler(asgi.ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self._idle: list[ThreadPoolExecutor] = []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        # The event loop is single-threaded: pop and append need no lock.
        executor = self._idle.pop() if self._idle else ThreadPoolExecutor(1, "request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            if len(self._idle) < IDLE_THREADS:
                self._idle.append(executor)
            else:
                executor.shutdown(wait=False)  # its thread ends once its queue is empty

    def load_middleware(self, is_async=False):
        # Once, when the handler is made; settings.MIDDLEWARE is put back at once.
        names = settings.MIDDLEWARE
        settings.MIDDLEWARE = [INLINE.get(name, name) for name in names]
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = names


def get_asgi_application() -> ASGIHandler:
    """`django.core.asgi.get_asgi_application()`, with the handler above."""
    import django

    django.setup(set_prefix=False)
    return ASGIHandler()
