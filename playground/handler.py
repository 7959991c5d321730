"""The ASGI handler `playground/asgi.py` serves: Django's, loading the middleware of
`playground/middleware.py` in place of Django's classes of the same names, and running each
request's thread-sensitive work on a thread kept from earlier requests.

`settings.MIDDLEWARE` keeps naming Django's classes because `manage.py check --deploy` looks for
those names (and skips its checks of HSTS, secure cookies and the like when it does not find
them). Only this handler, made once at startup, swaps in the subclasses whose hooks run on the
event loop. Tests with Django's clients, and WSGI, load Django's classes as named.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext
from django.conf import settings
from django.core.handlers import asgi

# Idle request threads kept for the next requests; a burst beyond this many at once starts new
# threads, which are let go when their requests end.
KEPT_THREADS = 64
_idle: list[ThreadPoolExecutor] = []

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
    async def __call__(self, scope, receive, send):
        """Django's, with the request's thread-sensitive context on a kept thread.

        Django gives every request a new context, and asgiref a new thread for its sync work
        (the request signals' receivers, `response.close`, sync views), then a second thread to
        join the first at the end: about 0.4 ms of CPU per request, a tenth of a generation
        request's. asgiref runs a context on an executor it is given instead, one call at a
        time on one thread; each request in flight gets its own, so requests never queue behind
        each other's sync work, and none of the app's tasks that outlive a request (saves,
        `history.keep`) call thread-sensitive code.
        """
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)  # Django refuses it with its message
            return
        executor = _idle.pop() if _idle else ThreadPoolExecutor(1, "request")
        try:
            async with ThreadSensitiveContext(executor=executor):
                await self.handle(scope, receive, send)
        finally:
            # Given back even if a sync call of this request is still running (the request was
            # cancelled while in it): the next request to take this thread then waits for that
            # call, where with asgiref's own thread this request's end waited for it (the join).
            if len(_idle) < KEPT_THREADS:
                _idle.append(executor)
            else:
                executor.shutdown(wait=False)

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
