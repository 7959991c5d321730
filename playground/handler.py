"""The ASGI handler `playground/asgi.py` serves: Django's, loading the middleware of
`playground/middleware.py` in place of Django's classes of the same names.

`settings.MIDDLEWARE` keeps naming Django's classes because `manage.py check --deploy` looks for
those names (and skips its checks of HSTS, secure cookies and the like when it does not find
them). Only this handler, made once at startup, swaps in the subclasses whose hooks run on the
event loop. Tests with Django's clients, and WSGI, load Django's classes as named.
"""

from __future__ import annotations

from django.conf import settings
from django.core.handlers import asgi

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
