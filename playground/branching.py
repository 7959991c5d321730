"""The tree of runs: branching a new run from an alternative token, and the navigator.

A branch is an ordinary generation (`views.generate`, streamed like any run) whose request is
built here, on the server, from a run the requester owns: the parent's prompt, plus the parent's
output up to the chosen token, plus the chosen alternative, with the parent's parameters. The
browser names only the parent run, the token index and the alternative's text, which must be one
of the alternatives stored for that token; nothing else of the request comes from the browser.

A branch point is a (run, token index) pair. Its siblings are the run itself (which took the
token it sampled there) followed by every run branched from that point, oldest first; the
navigator moves between them.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.core.exceptions import BadRequest
from django.http import Http404, HttpRequest, QueryDict

from playground.forms import GenerateForm, encode_stop
from playground.models import Run
from playground.owners import Owner

__all__ = ["Branch", "branch_from_post", "navigator"]


@dataclass(frozen=True, kw_only=True)
class Branch:
    parent: Run
    index: int
    alternative: str
    form: GenerateForm


async def branch_from_post(request: HttpRequest, owner: Owner) -> Branch | None:
    """The branch a generate POST asks for (`parent_run`, `branch_index`, `branch_text`), or
    None for an ordinary run. Another owner's run is a 404; a token or an alternative the parent
    does not have is a 400."""
    parent_id = request.POST.get("parent_run", "")
    if not parent_id:
        return None
    index = request.POST.get("branch_index", "")
    chosen = request.POST.get("branch_text")
    if not parent_id.isdigit() or not index.isdigit() or chosen is None:
        raise BadRequest("A branch needs a parent run, a token index and an alternative.")
    parent = await Run.objects.filter(owner.filter(), pk=int(parent_id)).afirst()
    if parent is None:
        raise Http404
    tokens = parent.tokens or []
    i = int(index)
    if i >= len(tokens) or chosen not in [alt for alt, _ in tokens[i][2]]:
        raise BadRequest("That run has no such alternative at that token.")
    prompt = parent.prompt + "".join(token[0] for token in tokens[:i]) + chosen
    return Branch(parent=parent, index=i, alternative=chosen, form=_form(parent.params, prompt))


def _form(params: dict, prompt: str) -> GenerateForm:
    """The parent's parameters as the browser would have posted them, with the new prompt."""
    data = QueryDict(mutable=True)
    for name, value in (params or {}).items():
        if name == "stop":
            data.setlist("stop", [encode_stop(s) for s in value or ()])
        elif isinstance(value, bool):
            if value:
                data[name] = "on"
        elif value is not None:
            data[name] = str(value)
    data["prompt"] = prompt
    return GenerateForm(data)


def navigator(record: Run) -> list[dict]:
    """The branch points around `record`: the one it was branched from, then those it has.

    Each is `{"origin", "index", "alternatives", "siblings", "position", "previous", "next"}`
    with `position` 1-based; database queries, so call it from sync code (a thread).
    """
    points: list[tuple[Run, int]] = []
    if record.parent_run_id is not None and record.branch_index is not None:
        parent = Run.objects.filter(pk=record.parent_run_id).defer("tokens").first()
        if parent is not None:
            points.append((parent, record.branch_index))
    indexes = (
        Run.objects.filter(parent_run=record)
        .order_by("branch_index")
        .values_list("branch_index", flat=True)
        .distinct()
    )
    points += [(record, i) for i in indexes if i is not None]
    rows = []
    for origin, index in points:
        children = list(
            Run.objects.filter(parent_run=origin, branch_index=index)
            .order_by("created_at", "id")
            .only("id", "prompt", "created_at")
        )
        siblings = [origin, *children]
        position = next((n for n, run in enumerate(siblings) if run.pk == record.pk), 0)
        rows.append(
            {
                "origin": origin,
                "index": index,
                "siblings": siblings,
                "position": position + 1,
                "previous": siblings[position - 1] if position > 0 else None,
                "next": siblings[position + 1] if position + 1 < len(siblings) else None,
            }
        )
    return rows
