"""Views of a user's workspace: the draft, saved sessions and their runs, sharing, the team
gallery, export and import, and “View code”.

Every lookup goes through `owners` (scoped to the request's owner: another owner's session is
a 404, never a 403 that would confirm it exists). Shared links are read-only: their only POST
copies the snapshot into the viewer's own workspace.
"""

from __future__ import annotations

import json
import secrets
from types import SimpleNamespace

from django.conf import settings
from django.core.paginator import Paginator
from django.db import transaction
from django.db.models import Q
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from playground import history, snippets, transfer
from playground.backends import get_backend
from playground.forms import GenerateForm
from playground.models import Draft, Run, Session, ShareLink, Visibility
from playground.owners import draft_of, owned_runs, owned_sessions, owner_of, team_sessions

PAGE = "playground/page.html"
PER_PAGE = 20
HISTORY_LIMIT = 50
NAME_MAX = 200


# --- the editor's workspace ------------------------------------------------------------------


def editor_context(request: HttpRequest, session: Session | None) -> dict:
    """What page.html needs beyond the form: the open session and its history of runs."""
    owner = owner_of(request)
    runs = Run.objects.filter(owner.filter())
    runs = runs.filter(session=session) if session else runs.filter(session__isnull=True)
    return {
        "session": session,
        "history": list(runs.defer("tokens")[:HISTORY_LIMIT]),
        "signed_in": request.user.is_authenticated,
    }


def editor_initial(request: HttpRequest, defaults: dict) -> dict:
    """The editor's starting values: the autosaved draft over the defaults."""
    draft = draft_of(owner_of(request))
    if draft is None:
        return defaults
    return {**defaults, **history.form_initial(draft.prompt or defaults["prompt"], draft.params)}


def session_initial(session: Session, defaults: dict) -> dict:
    initial = {**defaults, **history.form_initial(session.prompt, session.params)}
    if get_backend(session.backend):
        initial["backend"] = session.backend
    return initial


def shown_run(request: HttpRequest, session: Session | None) -> dict:
    """`?run=<id>`: a past run of this workspace, shown in the output panel."""
    run_id = request.GET.get("run", "")
    if not run_id.isdigit():
        return {}
    record = get_object_or_404(owned_runs(request), pk=run_id, session=session)
    return present(record)


@require_GET
def open_session(request: HttpRequest, pk: int) -> HttpResponse:
    from playground.views import default_initial, page_context

    session = owned_sessions(request).filter(pk=pk).first()
    if session is None:
        # A team session is readable (not editable) by every signed-in user.
        shared = get_object_or_404(team_sessions(request), pk=pk)
        return render_snapshot(request, transfer.export_session(shared), token=None, pk=pk)
    form = GenerateForm(initial=session_initial(session, default_initial()))
    context = {**page_context(form), **editor_context(request, session)}
    context.update(shown_run(request, session))
    return render(request, PAGE, context)


@require_POST
def save_draft(request: HttpRequest) -> HttpResponse:
    """Autosave of the editor (debounced by htmx): the open session, or else the draft."""
    owner = owner_of(request)
    prompt = history.storable(
        request.POST.get("prompt", "")[: settings.PLAYGROUND_MAX_PROMPT_CHARS]
    )
    params = history.params_from_post(request.POST)
    session_id = request.POST.get("session", "")
    if session_id:
        session = get_object_or_404(owned_sessions(request), pk=session_id)
        session.prompt, session.params = prompt, params
        backend = get_backend(str(params.get("backend") or ""))
        if backend is not None:
            session.backend, session.model = backend.id, backend.model
        session.save(update_fields=["prompt", "params", "backend", "model", "updated_at"])
        return HttpResponse(status=204)
    # update_or_create: two autosaves racing for a first draft end up in one row.
    Draft.objects.update_or_create(**owner.fields(), defaults={"prompt": prompt, "params": params})
    return HttpResponse(status=204)


def _redirect(request: HttpRequest, url: str) -> HttpResponse:
    if request.headers.get("HX-Request") == "true":
        response = HttpResponse(status=204)
        response["HX-Redirect"] = url
        return response
    return redirect(url)


def _name(request: HttpRequest, default: str = "") -> str:
    return history.storable(" ".join(request.POST.get("name", "").split())[:NAME_MAX]) or default


@require_POST
def save_session(request: HttpRequest) -> HttpResponse:
    """Save the editor as a new session, with the runs made in it since the last save."""
    owner = owner_of(request)
    draft = draft_of(owner)
    if "prompt" in request.POST:
        prompt = history.storable(request.POST["prompt"][: settings.PLAYGROUND_MAX_PROMPT_CHARS])
        params = history.params_from_post(request.POST)
    else:  # without JavaScript only the name is posted: the autosaved draft is the editor
        prompt = draft.prompt if draft else ""
        params = draft.params if draft else {}
    backend = get_backend(str(params.get("backend") or ""))
    source = owned_sessions(request).filter(pk=request.POST.get("session") or 0).first()
    with transaction.atomic():
        session = Session.objects.create(
            **owner.fields(),
            name=_name(request, "Untitled session"),
            prompt=prompt,
            params=params,
            backend=backend.id if backend else "",
            model=backend.model if backend else "",
        )
        runs = Run.objects.filter(owner.filter())
        if source is None:
            runs.filter(session__isnull=True).update(session=session)
        else:  # "Save as" from an open session: a copy that keeps the runs so far
            _copy_runs(source, session)
    return _redirect(request, reverse("session", args=[session.pk]))


def _copy_runs(source: Session, target: Session) -> None:
    for run in source.runs.order_by("created_at", "id"):
        data = transfer.export_run(run)
        created_at = data.pop("created_at")
        copy = Run.objects.create(
            user_id=target.user_id, owner_key=target.owner_key, session=target, **data
        )
        Run.objects.filter(pk=copy.pk).update(created_at=created_at)


@require_GET
def session_list(request: HttpRequest) -> HttpResponse:
    query = history.storable(request.GET.get("q", "").strip()[:200])
    sessions = owned_sessions(request).only("id", "name", "prompt", "visibility", "updated_at")
    if query:
        sessions = sessions.filter(Q(name__icontains=query) | Q(prompt__icontains=query))
    page = Paginator(sessions, PER_PAGE).get_page(request.GET.get("page"))
    context = {"page": page, "query": query, "signed_in": request.user.is_authenticated}
    return render(request, "playground/sessions.html", context)


@require_POST
def rename_session(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    name = _name(request)
    if name:
        session.name = name
        session.save(update_fields=["name", "updated_at"])
    return _redirect(request, reverse("session", args=[pk]))


@require_POST
def duplicate_session(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    with transaction.atomic():
        copy = Session.objects.create(
            user_id=session.user_id,
            owner_key=session.owner_key,
            name=f"{session.name} (copy)"[:NAME_MAX],
            prompt=session.prompt,
            params=session.params,
            backend=session.backend,
            model=session.model,
        )
        _copy_runs(session, copy)
    return _redirect(request, reverse("session", args=[copy.pk]))


def delete_session(request: HttpRequest, pk: int) -> HttpResponse:
    """GET asks for confirmation; POST deletes (with its runs and links)."""
    session = get_object_or_404(owned_sessions(request), pk=pk)
    if request.method == "POST":
        session.delete()
        return _redirect(request, reverse("sessions"))
    if request.method != "GET":
        return HttpResponse(status=405)
    return render(request, "playground/confirm_delete.html", {"session": session})


# --- runs ------------------------------------------------------------------------------------


class _Error(SimpleNamespace):
    pass


def present(record: Run | dict) -> dict:
    """The template context of a past run, in the shape of a live run's `run-end` context."""
    if isinstance(record, dict):
        record = Run(**{k: v for k, v in record.items() if k in transfer.RUN_FIELDS})
    rendered = history.render_record(record)
    error = (
        _Error(kind=record.error_kind, message=record.error_message) if record.error_kind else None
    )
    ttft, total, count = record.ttft_ms, record.total_ms, record.completion_tokens
    rate = None
    if count and count > 1 and total and total > (ttft or 0):
        rate = round((count - 1) / ((total - (ttft or 0)) / 1000), 1)
    summary = {
        "status": record.status,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": count,
        "ttft_ms": ttft,
        "total_ms": total,
        "tokens_per_second": rate,
        "finish_reason": record.finish_reason or None,
        "mean_logprob": rendered.mean_logprob,
        "perplexity": rendered.perplexity,
    }
    backend = get_backend(record.backend) or SimpleNamespace(label=record.backend or "The backend")
    run = SimpleNamespace(
        error=error, text=record.text, logprobs=record.logprobs, finish_reason=record.finish_reason
    )
    return {"run": run, "rendered": rendered, "summary": summary, "backend": backend,
            "past_run": record}  # fmt: skip


@require_GET
def show_run(request: HttpRequest, pk: int) -> HttpResponse:
    """A past run in the output panel: out-of-band swaps for htmx, else the editor page."""
    record = get_object_or_404(owned_runs(request), pk=pk)
    if request.headers.get("HX-Request") == "true":
        return render(request, f"{PAGE}#run-shown", present(record))
    url = reverse("session", args=[record.session_id]) if record.session_id else reverse("index")
    return redirect(f"{url}?run={record.pk}")


@require_POST
def restore_run(request: HttpRequest, pk: int) -> HttpResponse:
    """Put a run's prompt and parameters back into the editor (its session, or the draft)."""
    record = get_object_or_404(owned_runs(request), pk=pk)
    owner = owner_of(request)
    if record.session_id is not None:
        Session.objects.filter(pk=record.session_id).update(
            prompt=record.prompt, params=record.params, updated_at=timezone.now()
        )
        url = reverse("session", args=[record.session_id])
    else:
        Draft.objects.update_or_create(
            **owner.fields(), defaults={"prompt": record.prompt, "params": record.params}
        )
        url = reverse("index")
    return _redirect(request, f"{url}?run={record.pk}")


# --- sharing ---------------------------------------------------------------------------------


@require_GET
def share_settings(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    links = session.links.filter(revoked_at__isnull=True)
    context = {"session": session, "links": links, "visibilities": Visibility.choices}
    return render(request, "playground/share_settings.html", context)


@require_POST
def set_visibility(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    visibility = request.POST.get("visibility")
    if visibility not in Visibility.values:
        return HttpResponse("Unknown visibility.", status=400)
    with transaction.atomic():
        session.visibility = visibility
        session.save(update_fields=["visibility", "updated_at"])
        if visibility != Visibility.LINK:
            # Taking a session off "link" turns its links off too.
            session.links.filter(revoked_at__isnull=True).update(revoked_at=timezone.now())
        elif not session.links.filter(revoked_at__isnull=True).exists():
            _new_link(session)
    return _redirect(request, reverse("share-settings", args=[pk]))


def _new_link(session: Session) -> ShareLink:
    # 24 bytes from the OS's CSPRNG: 192 bits, far beyond guessing.
    return ShareLink.objects.create(
        session=session, token=secrets.token_urlsafe(24), snapshot=transfer.export_session(session)
    )


@require_POST
def create_link(request: HttpRequest, pk: int) -> HttpResponse:
    """A new link with a fresh snapshot of the session as it is now."""
    session = get_object_or_404(owned_sessions(request), pk=pk)
    with transaction.atomic():
        session.visibility = Visibility.LINK
        session.save(update_fields=["visibility", "updated_at"])
        _new_link(session)
    return _redirect(request, reverse("share-settings", args=[pk]))


@require_POST
def revoke_link(request: HttpRequest, pk: int, link: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    updated = session.links.filter(pk=link, revoked_at__isnull=True).update(
        revoked_at=timezone.now()
    )
    if not updated:
        raise Http404
    if not session.links.filter(revoked_at__isnull=True).exists() and (
        session.visibility == Visibility.LINK
    ):
        session.visibility = Visibility.PRIVATE
        session.save(update_fields=["visibility", "updated_at"])
    return _redirect(request, reverse("share-settings", args=[pk]))


def _live_link(token: str) -> ShareLink:
    link = ShareLink.objects.filter(token=token, revoked_at__isnull=True).first()
    # A link of a session taken off "link" visibility answers 404 too.
    if link is None or not Session.objects.filter(pk=link.session_id, visibility="link").exists():
        raise Http404
    return link


def render_snapshot(request: HttpRequest, snapshot: dict, *, token: str | None, pk=None):
    snapshot = {"name": "", "prompt": "", "params": {}, "backend": "", "model": "", **snapshot}
    runs = [present(run) for run in reversed(snapshot.get("runs") or [])]
    tree = branch_tree(snapshot.get("runs") or [], runs)
    context = {"snapshot": snapshot, "runs": runs, "token": token, "team_pk": pk, "tree": tree}
    response = render(request, "playground/shared.html", context)
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Cache-Control"] = "private, no-store"
    if token:
        # The token is in the URL: never send it on as a Referer. (The team view has no token,
        # and keeps the default policy so its own form posts with a real Origin.)
        response["Referrer-Policy"] = "no-referrer"
    return response


def branch_tree(exported: list, shown: list) -> list[dict] | None:
    """The tree of a snapshot's runs (numbered from 1, oldest first), or None without branches.

    Annotates each shown run (newest first) with its number and, for a branch, its parent's
    number and branch point."""
    count = len(exported)
    nodes = [{"number": n + 1, "children": []} for n in range(count)]
    roots = []
    for n, data in enumerate(exported):
        branch = data.get("branch") if isinstance(data, dict) else None
        shown[count - 1 - n]["number"] = n + 1
        if (
            isinstance(branch, dict)
            and isinstance(branch.get("parent"), int)
            and (0 <= branch["parent"] < n)
        ):
            nodes[branch["parent"]]["children"].append(nodes[n])
            nodes[n]["index"] = branch.get("index")
            shown[count - 1 - n]["branch"] = {"parent": branch["parent"] + 1, **nodes[n]}
        else:
            roots.append(nodes[n])
    return roots if len(roots) < count else None


@require_GET
def shared(request: HttpRequest, token: str) -> HttpResponse:
    link = _live_link(token)
    return render_snapshot(request, link.snapshot, token=token)


def copy_shared(request: HttpRequest, token: str) -> HttpResponse:
    """“Open in playground”: a private copy in the viewer's own workspace.

    GET asks first, from a page of its own: the share page sends `Referrer-Policy: no-referrer`,
    under which a browser posts with `Origin: null`, which CSRF protection rightly refuses.
    """
    link = _live_link(token)
    if request.method == "GET":
        response = render(request, "playground/shared_open.html", {"snapshot": link.snapshot,
                                                                   "token": token})  # fmt: skip
        response["X-Robots-Tag"] = "noindex, nofollow"
        response["Referrer-Policy"] = "same-origin"
        response["Cache-Control"] = "private, no-store"
        return response
    if request.method != "POST":
        return HttpResponse(status=405)
    session = transfer.import_session(link.snapshot, owner_of(request).fields())
    return _redirect(request, reverse("session", args=[session.pk]))


@require_POST
def copy_team_session(request: HttpRequest, pk: int) -> HttpResponse:
    source = get_object_or_404(team_sessions(request), pk=pk)
    session = transfer.import_session(transfer.export_session(source), owner_of(request).fields())
    return _redirect(request, reverse("session", args=[session.pk]))


@require_GET
def gallery(request: HttpRequest) -> HttpResponse:
    sessions = team_sessions(request).select_related("user").defer("params")
    query = history.storable(request.GET.get("q", "").strip()[:200])
    if query:
        sessions = sessions.filter(Q(name__icontains=query) | Q(prompt__icontains=query))
    page = Paginator(sessions, PER_PAGE).get_page(request.GET.get("page"))
    context = {"page": page, "query": query, "signed_in": request.user.is_authenticated}
    return render(request, "playground/gallery.html", context)


# --- export and import -----------------------------------------------------------------------


@require_GET
def export_session(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    response = JsonResponse(transfer.export_session(session), json_dumps_params={"indent": 1})
    response["Content-Disposition"] = f'attachment; filename="session-{session.pk}.json"'
    response["Cache-Control"] = "private, no-store"
    return response


IMPORT_LIMIT = 20 * 1024 * 1024


@require_POST
def import_session(request: HttpRequest) -> HttpResponse:
    upload = request.FILES.get("file")
    error = None
    if upload is None:
        error = "Choose a session file (.json) to import."
    elif upload.size > IMPORT_LIMIT:
        error = "That file is too large to be a session export."
    else:
        try:
            data = json.loads(upload.read())
            session = transfer.import_session(data, owner_of(request).fields())
        except (ValueError, UnicodeDecodeError) as exc:
            error = str(exc) if isinstance(exc, transfer.ImportError_) else "Not a JSON file."
        else:
            return redirect("session", pk=session.pk)
    sessions = owned_sessions(request)
    page = Paginator(sessions, PER_PAGE).get_page(1)
    context = {"page": page, "query": "", "import_error": error}
    return render(request, "playground/sessions.html", context, status=400)


# --- view code -------------------------------------------------------------------------------


@require_POST
def view_code(request: HttpRequest) -> HttpResponse:
    form = GenerateForm(request.POST)
    if not form.is_valid():
        return render(request, "playground/code.html", {"form": form}, status=422)
    backend = form.selected_backend
    base_url = backend.base_url or request.build_absolute_uri("/v1")
    code = snippets.build_snippets(backend, form.to_request(), base_url=base_url)
    return render(request, "playground/code.html", {"form": form, "code": code})


@require_GET
def history_panel(request: HttpRequest) -> HttpResponse:
    """The history panel again (after a stopped run, whose save ends after the stream)."""
    session_id = request.GET.get("session", "")
    session = None
    if session_id:
        session = get_object_or_404(owned_sessions(request), pk=session_id)
    context = editor_context(request, session)
    return render(request, "playground/history.html#history-panel", context)
