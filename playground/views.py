"""Views: the playground page and the streaming generate endpoint.

Views orchestrate: validate with `forms.GenerateForm`, pick the configured backend by id, and hand
the stream to `streaming.relay`. Nothing here knows upstream URLs or JSON shapes.
"""

from __future__ import annotations

import asyncio

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache import cache
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.shortcuts import render
from django.template.loader import render_to_string
from django.views import csrf, defaults
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from playground import (
    branching,
    completions,
    history,
    limits,
    offline,
    owners,
    probes,
    streaming,
    workspace,
)
from playground.backends import Backend, configured_backends, default_backend, resolve
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
        "picker": model_picker(backends, form),
        "insert_mode": form["mode"].value() == "insert",
        "stop_slots": (stops + [""] * MAX_STOP_SEQUENCES)[:MAX_STOP_SEQUENCES],
    }


def model_picker(backends: tuple[Backend, ...], form: GenerateForm) -> list[dict]:
    """The Model select's groups: one per backend, one option per model.

    A backend's default model is chosen by the bare backend id, others by `backend:model`.
    """
    chosen_backend, chosen_model = form.selected
    groups = []
    for backend in backends:
        options = []
        for model in backend.models:
            options.append(
                {
                    "value": backend.id
                    if model.id == backend.model
                    else f"{backend.id}:{model.id}",
                    "label": model.id,
                    "selected": backend.id == chosen_backend.id and model.id == chosen_model.id,
                    "max_tokens": min(model.max_tokens, model.context_window - 1),
                    "default_max_tokens": model.default_max_tokens,
                    "fim": model.fim is not None,
                    "offline": backend.is_offline,
                }
            )
        groups.append({"label": backend.label, "options": options})
    return groups


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


def branching_recorder(owner: owners.Owner, form: GenerateForm, branch: branching.Branch):
    """A branch is saved in its parent's session, as a child of the parent at its token."""
    return history.make_recorder(
        owner,
        branch.parent.session_id,
        history.params_from_cleaned(form.cleaned_data),
        parent_id=branch.parent.pk,
        branch_index=branch.index,
    )


@require_POST
async def generate(request: HttpRequest) -> HttpResponse:
    # A branch from an alternative token: the request is rebuilt from the owner's parent run.
    owner = await owners.aowner_of(request)
    branch = await branching.branch_from_post(request, owner)
    form = branch.form if branch else GenerateForm(request.POST)
    if not form.is_valid():
        # An unknown backend or model id (a URL, a stale page) is a bad request, not a field to
        # fix: 400, and nothing is sent anywhere. Other invalid input is a 422 with messages.
        status = 400 if form.is_unknown_backend else 422
        if request.headers.get("HX-Request") != "true":
            return render(request, PAGE, page_context(form), status=status)
        # 422 with out-of-band swaps only: htmx 4 swaps error responses, and since the main
        # content is empty the live output is left alone; each message lands beside its field.
        return render(request, f"{PAGE}#form-errors", {"form": form}, status=status)
    backend = form.selected_backend
    if branch:
        record = branching_recorder(owner, form, branch)
    else:
        record = await recorder_for(request, form)  # the owner's session, else 404
    slot = await limits.admit(request)  # before anything reaches the upstream
    if isinstance(slot, limits.Refusal):
        return await refused(request, form, slot)
    if request.headers.get("HX-Request") != "true":
        # Without JavaScript the form posts normally: run to the end and answer with the page.
        try:
            context = await streaming.generate_whole(backend, form.to_request(), record=record)
        finally:
            slot.release()
        return await sync_to_async(_whole_page)(request, form, context)
    response = StreamingHttpResponse(
        streaming.relay(backend, form.to_request(), record=record, on_end=slot.release),
        content_type="text/event-stream; charset=utf-8",
    )
    response["Cache-Control"] = "no-cache, no-store"
    # Reverse proxies (nginx and friends) must pass each event through as it is written.
    response["X-Accel-Buffering"] = "no"
    return response


@require_POST
async def token_count(request: HttpRequest) -> HttpResponse:
    """The prompt's token count for the picker's model, shown while typing (debounced).

    Only a real count: the backend's tokenize endpoint or the offline model's tokenizer.
    Without one the fragment says the count comes from `usage` after a run; nothing is guessed.
    """
    found = resolve(request.POST.get("backend", ""))
    if found is None:
        return HttpResponse("Unknown backend.", status=400)
    backend, model = found
    prompt = request.POST.get("prompt", "")[: settings.PLAYGROUND_MAX_PROMPT_CHARS]
    if request.POST.get("mode") == "insert" and model.fim is not None:
        prompt = model.fim.prompt(prompt, request.POST.get("suffix", ""))
    count: int | None = None
    failed = False
    if backend.is_offline:
        model_obj = await asyncio.to_thread(offline.load_model)
        count = await asyncio.to_thread(model_obj.count_tokens, prompt)
    elif backend.caps.tokenize:
        try:
            count = await completions.count_tokens(
                completions.get_client(), backend, model.id, prompt
            )
        except completions.UpstreamError:
            failed = True
    context = {
        "count": count,
        "failed": failed,
        "model": model,
        "left": None if count is None else max(0, model.context_window - count),
    }
    return render(request, f"{PAGE}#token-count", context)


STATUS_CACHE_SECONDS = 120


@require_GET
async def backend_status(request: HttpRequest) -> HttpResponse:
    """The status badges: `probes.probe` per backend, cached briefly so a page is cheap."""
    reports = []
    for backend in configured_backends():
        key = f"playground:probe:{backend.id}:{backend.model}"
        report = await cache.aget(key)
        if report is None:
            report = await probes.probe(completions.get_client(), backend)
            await cache.aset(key, report, STATUS_CACHE_SECONDS)
        reports.append(report)
    return render(request, f"{PAGE}#backend-status", {"reports": reports})


async def refused(
    request: HttpRequest, form: GenerateForm, refusal: limits.Refusal
) -> HttpResponse:
    """A generation over a limit: the reason in the status line, with Retry-After."""
    if request.headers.get("HX-Request") == "true":
        response = render(request, f"{PAGE}#refused", {"refusal": refusal}, status=refusal.status)
    else:
        response = await sync_to_async(_whole_page)(request, form, {"refusal": refusal})
        response.status_code = refusal.status
    response["Retry-After"] = str(refusal.retry_after)
    return response


def _whole_page(request: HttpRequest, form: GenerateForm, context: dict) -> HttpResponse:
    record = context.get("record")
    session = record.session if record is not None and record.session_id else None
    return render(
        request,
        PAGE,
        {**page_context(form), **workspace.editor_context(request, session), **context},
    )


# What an htmx request that failed as a whole shows in the page's status (`_failed`).
CSRF_REFUSED = (
    "Refused: this page's security token was out of date (signing in elsewhere renews it). "
    "It has the new one now: try again."
)
NOT_FOUND = "Not found: it was deleted (perhaps in another tab) or is not yours. Nothing changed."
SERVER_ERROR = "The server failed on this request and nothing changed. Try again."


def _failed(request: HttpRequest, message: str, status: int) -> HttpResponse | None:
    """For an htmx request, a response holding only out-of-band status messages, else None.

    htmx 4 swaps error responses like any other: Django's error pages would land in the live
    output or in place of the form that asked. With no main content nothing is swapped there,
    so the prompt, the parameters and the output stay. Rendered without the request, so no
    context processor runs (a failing database must not fail the error page too).
    """
    if request.headers.get("HX-Request") != "true":
        return None
    html = render_to_string(f"{PAGE}#request-failed", {"message": message})
    response = HttpResponse(html, status=status)
    response["Cache-Control"] = "no-store"
    return response


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    """A request refused for its CSRF token (`settings.CSRF_FAILURE_VIEW`).

    The usual cause is a sign-in in another tab, which renews the token: every button of an
    older page is then refused. An htmx request also gets the renewed token in
    `X-CSRF-Renewed`, which `app.js` puts where the page's requests take it from, so trying
    again works. Only a same-origin script can read that header, as it could read the token
    from any page. Forms posted without htmx get Django's page.
    """
    response = _failed(request, CSRF_REFUSED, 403)
    if response is None:
        return csrf.csrf_failure(request, reason)
    response["X-CSRF-Renewed"] = get_token(request)
    return response


def not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    """`handler404`: for htmx, the status message alone (a run or session gone elsewhere)."""
    return _failed(request, NOT_FOUND, 404) or defaults.page_not_found(request, exception)


def server_error(request: HttpRequest) -> HttpResponse:
    """`handler500`: for htmx, the status message alone; Django's page otherwise."""
    return _failed(request, SERVER_ERROR, 500) or defaults.server_error(request)
