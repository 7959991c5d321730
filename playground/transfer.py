"""Sessions as JSON: the export file, the import, share snapshots and the JSON-lines dump.

One shape serves all four, so a session that goes out and comes back in is the same session:
`export_session(import_session(data, owner)) == data` (ids are not part of it; the owner is
whoever imports it).
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from playground.models import Run, RunStatus, Session, Visibility

FORMAT = "playground.session/1"
RUN_FIELDS = (
    "params",
    "prompt",
    "backend",
    "model",
    "text",
    "tokens",
    "logprobs",
    "ttft_ms",
    "total_ms",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "status",
    "error_kind",
    "error_message",
)


class ImportError_(ValueError):
    """The file is not a playground session export."""


def export_run(run: Run) -> dict:
    data = {name: getattr(run, name) for name in RUN_FIELDS}
    data["created_at"] = run.created_at.isoformat()
    return data


def export_session(session: Session) -> dict:
    runs = list(session.runs.order_by("created_at", "id"))
    exported = [export_run(run) for run in runs]
    # The tree of runs (branching.py): a branch names its parent by position in this list.
    position = {run.pk: n for n, run in enumerate(runs)}
    for run, data in zip(runs, exported, strict=True):
        if run.parent_run_id in position and run.branch_index is not None:
            data["branch"] = {"parent": position[run.parent_run_id], "index": run.branch_index}
    return {
        "format": FORMAT,
        "name": session.name,
        "prompt": session.prompt,
        "params": session.params,
        "backend": session.backend,
        "model": session.model,
        "created_at": session.created_at.isoformat(),
        "updated_at": session.updated_at.isoformat(),
        "runs": exported,
    }


def _text(data: dict, name: str, limit: int | None = None) -> str:
    value = data.get(name, "")
    if not isinstance(value, str):
        raise ImportError_(f"“{name}” must be text.")
    return value[:limit] if limit else value


def _when(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _check_run(data: object) -> dict:
    if not isinstance(data, dict):
        raise ImportError_("Each run must be an object.")
    run = {}
    for name in RUN_FIELDS:
        value = data.get(name)
        if name in ("ttft_ms", "total_ms", "prompt_tokens", "completion_tokens"):
            if value is not None and not isinstance(value, int):
                raise ImportError_(f"A run's “{name}” must be a whole number.")
            run[name] = value
        elif name == "params":
            run[name] = value if isinstance(value, dict) else {}
        elif name == "tokens":
            if not isinstance(value, list) or not all(
                isinstance(t, list) and len(t) == 3 and isinstance(t[0], str) for t in value
            ):
                raise ImportError_("A run's tokens are not in the expected shape.")
            run[name] = value
        elif name == "status":
            if value not in RunStatus.values:
                raise ImportError_("A run's status is unknown.")
            run[name] = value
        else:
            run[name] = _text(data, name)
    run["created_at"] = _when(data.get("created_at"))
    branch = data.get("branch")
    if branch is not None:
        parent, index = (
            (branch.get("parent"), branch.get("index"))
            if isinstance(branch, dict)
            else (None, None)
        )
        if not (isinstance(parent, int) and isinstance(index, int) and parent >= 0 and index >= 0):
            raise ImportError_("A run's branch must name its parent run and token.")
        run["branch"] = (parent, index)
    return run


def import_session(data: object, owner_fields: dict, *, name: str | None = None) -> Session:
    """Create a private session (and its runs) for an owner from exported data."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ImportError_("This is not a playground session export.")
    runs = data.get("runs") or []
    if not isinstance(runs, list):
        raise ImportError_("“runs” must be a list.")
    checked = [_check_run(r) for r in runs]
    params = data.get("params")
    with transaction.atomic():
        session = Session.objects.create(
            **owner_fields,
            name=(name or _text(data, "name", 200)).strip() or "Imported session",
            prompt=_text(data, "prompt"),
            params=params if isinstance(params, dict) else {},
            backend=_text(data, "backend", 64),
            model=_text(data, "model", 200),
            visibility=Visibility.PRIVATE,
        )
        records: list[Run] = []
        for run in checked:
            created_at = run.pop("created_at")
            parent, index = run.pop("branch", (None, None))
            if parent is not None:
                if parent >= len(records):
                    raise ImportError_("A run's branch must name an earlier run.")
                run.update(parent_run=records[parent], branch_index=index)
            record = Run.objects.create(**owner_fields, session=session, **run)
            records.append(record)
            if created_at is not None:
                # auto_now_add ignores a given value: set the original time afterwards.
                Run.objects.filter(pk=record.pk).update(created_at=created_at)
        stamps = {
            k: when
            for k in ("created_at", "updated_at")
            if (when := _when(data.get(k))) is not None
        }
        if stamps:
            Session.objects.filter(pk=session.pk).update(**stamps)
        session.refresh_from_db()
    return session
