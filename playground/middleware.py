"""Django's stock middleware, with its hooks run on the event loop in async requests.

Under ASGI, Django's `MiddlewareMixin` runs each `process_request` and `process_response` of an
async request through `sync_to_async(thread_sensitive=True)`, and the handler does the same for a
sync `process_view`: a hop to the request's worker thread per hook, about a dozen for the stack in
`settings.MIDDLEWARE`, and asgiref starts (and later joins) that thread for the first of them.
That was the largest part of a generation's CPU before its first token (docs/PERFORMANCE.md).

The hooks of the classes below do no I/O with this project's settings: sessions are signed
cookies (`SESSION_ENGINE`), messages are cookies (`MESSAGE_STORAGE`), the CSRF secret is a cookie
(`CSRF_USE_SESSIONS` off), `request.user` is set lazily and only read on the event loop through
`await request.auser()`, and a request body is always in memory (`FILE_UPLOAD_MAX_MEMORY_SIZE` is
the body cap), so the CSRF check's read of `request.POST` only parses bytes. So they run inline,
exactly the same code in the same order, only without the thread hop. A class whose hooks could
block with the settings in force (a database or cache session engine, session-backed messages)
keeps Django's way. Sync requests (the test client, WSGI) are untouched.

`settings.MIDDLEWARE` keeps naming Django's classes, because `manage.py check --deploy` looks for
those names (and skips the checks of HSTS, secure cookies and so on when it does not find them).
`playground.handler.ASGIHandler`, which `playground/asgi.py` serves, loads these in their place.
"""

from __future__ import annotations

from asgiref.sync import markcoroutinefunction
from django.conf import settings
from django.contrib.auth import middleware as auth
from django.contrib.messages import middleware as messages
from django.contrib.sessions import middleware as sessions
from django.middleware import clickjacking, common, csrf, security

# Settings under which a class's hooks never touch the network, the disk or the database.
SIGNED_COOKIE_SESSIONS = "django.contrib.sessions.backends.signed_cookies"
COOKIE_MESSAGES = "django.contrib.messages.storage.cookie.CookieStorage"


def _no_io() -> bool:
    return True


def _cookie_sessions() -> bool:
    return settings.SESSION_ENGINE == SIGNED_COOKIE_SESSIONS


def _cookie_messages() -> bool:
    # The fallback storage would write to the session, the session storage too: both are
    # I/O-free only with signed-cookie sessions, so only the plain cookie storage is inline.
    return settings.MESSAGE_STORAGE == COOKIE_MESSAGES


def _csrf_in_cookie() -> bool:
    return not settings.CSRF_USE_SESSIONS or _cookie_sessions()


def inline(base: type, safe=_no_io) -> type:
    """`base` (a `MiddlewareMixin`), its hooks called directly in async mode when `safe()`."""

    class Inline(base):
        def __init__(self, get_response):
            super().__init__(get_response)
            self.inline = self.async_mode and safe()
            if self.inline and hasattr(base, "process_view"):
                # The handler adapts a sync process_view with sync_to_async; an instance
                # attribute that is a coroutine function is awaited as it is.
                sync_view = super().process_view

                async def process_view(request, callback, callback_args, callback_kwargs):
                    return sync_view(request, callback, callback_args, callback_kwargs)

                self.process_view = markcoroutinefunction(process_view)

        async def __acall__(self, request):
            if not self.inline:
                return await super().__acall__(request)
            response = None
            if hasattr(self, "process_request"):
                response = self.process_request(request)
            response = response or await self.get_response(request)
            if hasattr(self, "process_response"):
                response = self.process_response(request, response)
            return response

    Inline.__name__ = Inline.__qualname__ = base.__name__
    Inline.__module__ = __name__
    Inline.__doc__ = f"{base.__module__}.{base.__name__}, inline on the event loop (see module)."
    return Inline


SecurityMiddleware = inline(security.SecurityMiddleware)
SessionMiddleware = inline(sessions.SessionMiddleware, _cookie_sessions)
CommonMiddleware = inline(common.CommonMiddleware)
CsrfViewMiddleware = inline(csrf.CsrfViewMiddleware, _csrf_in_cookie)
AuthenticationMiddleware = inline(auth.AuthenticationMiddleware)
MessageMiddleware = inline(messages.MessageMiddleware, _cookie_messages)
XFrameOptionsMiddleware = inline(clickjacking.XFrameOptionsMiddleware)
