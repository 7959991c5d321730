"""The floor under the brief's stack: the minimal relay (bench/floor.py) as a Django view.

Run as the app is run (`uvicorn playground.asgi:application`, one worker, lifespan on) with
`DJANGO_SETTINGS_MODULE=bench.django_floor`: this module is both the settings (the app's own,
every middleware included: sessions, CSRF, authentication, security headers) and the URLconf,
whose `POST /generate` reads the form and relays the upstream exactly as bench/floor.py does.
No form validation, limits, token objects, highlighting, templates or saving.

What it costs per request and per 1,000 tokens, beside the app and the bare floor, is how much
of the app's cost is Django's own part (docs/PERFORMANCE.md, section 2).
"""

from __future__ import annotations

from playground.settings import *  # noqa: F403  (the app's settings, one line changed)

ROOT_URLCONF = "bench.django_floor"


def _urlpatterns() -> list:
    from urllib.parse import parse_qs

    from django.http import HttpResponse, StreamingHttpResponse
    from django.urls import path
    from django.views.decorators.csrf import ensure_csrf_cookie
    from django.views.decorators.http import require_POST

    from bench.floor import events, events_features, events_httpx, events_lean, events_product

    if READER == "httpx":
        events = events_httpx  # noqa: F811
    elif READER == "features":
        events = events_features  # noqa: F811
    elif READER == "product":
        events = events_product  # noqa: F811
    elif READER == "lean":
        events = events_lean  # noqa: F811

    @ensure_csrf_cookie
    def page(request):
        return HttpResponse("<!doctype html><title>floor</title>")

    @require_POST
    async def generate(request):
        form = parse_qs(request.body.decode())
        response = StreamingHttpResponse(
            events(form, UPSTREAM_PORT), content_type="text/event-stream; charset=utf-8"
        )
        response["Cache-Control"] = "no-cache"
        return response

    return [path("", page), path("generate", generate)]


# How the view reads the upstream: a raw socket (as bench/floor.py), "httpx" (the app's
# client), "features" (the app's client, and the app's read path, render and saved JSON for
# every run's tokens), "product" (that, with each run saved as a row and its highlighted
# completion sent) or "lean" (that, with the leanest reader of the tokens), from the
# environment (FLOOR_READER).
READER = env("FLOOR_READER", default="socket")  # noqa: F405
# The upstream the app would be pointed at, from the same setting.
UPSTREAM_PORT = int(env("COMPLETIONS_BASE_URL").rsplit(":", 1)[1].split("/", 1)[0])  # noqa: F405


def __getattr__(name: str) -> list:
    # The URLconf's patterns are made when Django first asks, after setup: as a settings
    # module this file is imported before the apps (and bench.floor's imports) are ready.
    if name == "urlpatterns":
        globals()["urlpatterns"] = patterns = _urlpatterns()
        return patterns
    raise AttributeError(name)
