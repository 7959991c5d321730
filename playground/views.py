"""Views: the playground page and the streaming generate endpoint.

Views orchestrate: validate with `forms.GenerateForm`, pick the configured backend by id, and hand
the stream to `streaming.relay`. Nothing here knows upstream URLs or JSON shapes.
"""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from playground import history, owners, streaming, workspace
from playground.backends import configured_backends, default_backend
from playground.forms import DEFAULTS, MAX_STOP_SEQUENCES, GenerateForm, encode_stop
from playground.models import Session

PAGE = "playground/page.html"

EXAMPLE_PROMPT = '''def fibonacci(n):
    """Return the n-th Fibonacci number."""
'''


@require_GET
@ensure_csrf_cookie
def index(request: HttpRequest) -> HttpResponse:
    # The editor comes back as it was left: the autosaved draft over the defaults.
    form = GenerateForm(initial=workspace.editor_initial(request, default_initial()))
    context = {**page_context(form), **workspace.editor_context(request, None)}
    context.update(workspace.shown_run(request, None))
    return render(request, PAGE, context)


def default_initial() -> dict:
    return {**DEFAULTS, "backend": default_backend().id, "prompt": EXAMPLE_PROMPT}


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


async def recorder_for(request: HttpRequest, form: GenerateForm):
    """Where this run is saved: the session named by the form (the owner's own, else 404), or
    the owner's unsaved workspace."""
    owner = await owners.aowner_of(request)
    session_id = request.POST.get("session") or None
    if session_id is not None:
        owned = Session.objects.filter(owner.filter(), pk=session_id)
        if not session_id.isdigit() or not await owned.aexists():
            raise Http404
        session_id = int(session_id)
    return history.make_recorder(owner, session_id, history.params_from_cleaned(form.cleaned_data))


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
    record = await recorder_for(request, form)
    if request.headers.get("HX-Request") != "true":
        # Without JavaScript the form posts normally: run to the end and answer with the page.
        context = await streaming.generate_whole(backend, form.to_request(), record=record)
        return await sync_to_async(_whole_page)(request, form, context)
    response = StreamingHttpResponse(
        streaming.relay(backend, form.to_request(), record=record),
        content_type="text/event-stream; charset=utf-8",
    )
    response["Cache-Control"] = "no-cache, no-store"
    # Reverse proxies (nginx and friends) must pass each event through as it is written.
    response["X-Accel-Buffering"] = "no"
    return response


def _whole_page(request: HttpRequest, form: GenerateForm, context: dict) -> HttpResponse:
    record = context.get("record")
    session = record.session if record is not None and record.session_id else None
    return render(
        request,
        PAGE,
        {**page_context(form), **workspace.editor_context(request, session), **context},
    )
