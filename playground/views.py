"""Views: the playground page and the streaming generate endpoint.

Views orchestrate: validate with `forms.GenerateForm`, pick the configured backend by id, and hand
the stream to `streaming.relay`. Nothing here knows upstream URLs or JSON shapes.
"""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from playground import limits, streaming
from playground.backends import configured_backends, default_backend
from playground.forms import DEFAULTS, MAX_STOP_SEQUENCES, GenerateForm, encode_stop

PAGE = "playground/page.html"

EXAMPLE_PROMPT = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
'''


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    backend = default_backend()
    initial = {**DEFAULTS, "backend": backend.id, "prompt": EXAMPLE_PROMPT}
    return render(request, PAGE, page_context(GenerateForm(initial=initial)))


def page_context(form: GenerateForm) -> dict:
    backends = configured_backends()
    if form.is_bound:
        stops = form.data.getlist("stop")
    else:
        stops = [encode_stop(s) for s in form.initial.get("stop", ())]
    return {
        "form": form,
        "backends": backends,
        "stop_slots": (stops + [""] * MAX_STOP_SEQUENCES)[:MAX_STOP_SEQUENCES],
    }


@require_POST
async def generate(request: HttpRequest) -> HttpResponse:
    form = GenerateForm(request.POST)
    if not form.is_valid():
        if request.headers.get("HX-Request") != "true":
            return render(request, PAGE, page_context(form), status=422)
        # 422 with out-of-band swaps only: htmx 4 swaps error responses, and since the main
        # content is empty the live output is left alone; each message lands beside its field.
        response = render(request, f"{PAGE}#form-errors", {"form": form}, status=422)
        return response
    backend = form.selected_backend
    slot = await limits.admit(request)  # before anything reaches the upstream
    if isinstance(slot, limits.Refusal):
        return refused(request, form, slot)
    if request.headers.get("HX-Request") != "true":
        # Without JavaScript the form posts normally: run to the end and answer with the page.
        try:
            context = await streaming.generate_whole(backend, form.to_request())
        finally:
            slot.release()
        return render(request, PAGE, {**page_context(form), **context})
    response = StreamingHttpResponse(
        limits.holding(slot, streaming.relay(backend, form.to_request())),
        content_type="text/event-stream; charset=utf-8",
    )
    response["Cache-Control"] = "no-cache, no-store"
    # Reverse proxies (nginx and friends) must pass each event through as it is written.
    response["X-Accel-Buffering"] = "no"
    return response


def refused(request: HttpRequest, form: GenerateForm, refusal: limits.Refusal) -> HttpResponse:
    """A generation over a limit: the reason in the status line, with Retry-After."""
    if request.headers.get("HX-Request") == "true":
        response = render(request, f"{PAGE}#refused", {"refusal": refusal}, status=refusal.status)
    else:
        context = {**page_context(form), "refusal": refusal}
        response = render(request, PAGE, context, status=refusal.status)
    response["Retry-After"] = str(refusal.retry_after)
    return response
