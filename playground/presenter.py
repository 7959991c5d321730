"""Demo mode: a presenter view of a session, replaying a saved run's stream at a chosen speed.

The replay is driven by the run's stored tokens (their texts spell the saved text exactly; when
they do not, the saved text is replayed as one piece), timed from the stored time to first token
and total time scaled by the speed, by `app.js`. Nothing is generated again. The owner's
sessions at /sessions/<id>/present, and read-only share links at /share/<token>/present.
"""

from __future__ import annotations

from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_GET

from playground.models import Run
from playground.owners import owned_sessions
from playground.workspace import _live_link, present

SPEEDS = ("0.5", "1", "2", "instant")
PAGE = "playground/presenter.html"


def replay_pieces(record: Run) -> list[str]:
    """What the replay appends, in order: the stored tokens' texts, or the whole text."""
    texts = [token[0] for token in record.tokens or []]
    return texts if "".join(texts) == record.text else [record.text]


def _render(request, *, name, prompt, choices, record, base_url, chosen) -> HttpResponse:
    speed = request.GET.get("speed", "1")
    if speed not in SPEEDS:
        speed = "1"
    context = {
        "name": name,
        "prompt": prompt,
        "choices": choices,
        "chosen": chosen,
        "speed": speed,
        "speeds": SPEEDS,
        "base_url": base_url,
        "pieces": replay_pieces(record) if record is not None else [],
        "record": None,
    }
    if record is not None:
        context.update(present(record))
    response = render(request, PAGE, context)
    response["Cache-Control"] = "private, no-store"
    return response


@require_GET
def present_session(request: HttpRequest, pk: int) -> HttpResponse:
    session = get_object_or_404(owned_sessions(request), pk=pk)
    runs = list(session.runs.order_by("created_at", "id"))
    run_id = request.GET.get("run", "")
    if run_id:
        record = next((r for r in runs if str(r.pk) == run_id), None)
        if record is None:
            raise Http404
    else:
        record = runs[-1] if runs else None
    choices = [(r.pk, r) for r in runs]
    return _render(
        request,
        name=session.name,
        prompt=session.prompt if record is None else record.prompt,
        choices=choices,
        record=record,
        base_url=reverse("present", args=[pk]),
        chosen=None if record is None else record.pk,
    )


@require_GET
def present_shared(request: HttpRequest, token: str) -> HttpResponse:
    """The same view of a share link's frozen snapshot, read-only; runs are numbered from 1."""
    snapshot = _live_link(token).snapshot
    fields = {f.name for f in Run._meta.fields}
    runs = [Run(**{k: v for k, v in r.items() if k in fields}) for r in snapshot.get("runs") or []]
    number = request.GET.get("run", "")
    if number:
        if not number.isdigit() or not 1 <= int(number) <= len(runs):
            raise Http404
        chosen = int(number)
    else:
        chosen = len(runs) or None
    record = runs[chosen - 1] if chosen else None
    response = _render(
        request,
        name=snapshot.get("name", ""),
        prompt=snapshot.get("prompt", "") if record is None else record.prompt,
        choices=[(n, r) for n, r in enumerate(runs, 1)],
        record=record,
        base_url=reverse("present-shared", args=[token]),
        chosen=chosen,
    )
    response["X-Robots-Tag"] = "noindex, nofollow"
    response["Referrer-Policy"] = "no-referrer"
    return response
