"""Runs side by side, and the token diff of any two runs.

The compare page holds one prompt and 2 to 4 columns, each with its own model and parameters.
One POST to `compare_run` validates every column with `forms.GenerateForm` (the same allow-list
as a single run), admits each column against the limits (each is a generation), then streams all
of them at once in one event stream: each column's reader is its own task (`streaming.pump`),
their deltas are coalesced together, and every message is a set of out-of-band swaps into that
column's own `#cN-…` elements. Each run is recorded like any other (the unsaved workspace's
history), and ends with its own highlighted result and stats.

`diff` compares two of the owner's runs token by token: the first index where their tokens
differ is the fork, where both sides' probabilities (and each side's probability of the other's
token, when it was among its alternatives) are shown.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import json
import math
from dataclasses import dataclass

from django.http import HttpRequest, HttpResponse, QueryDict, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render
from django.template.loader import render_to_string
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_GET, require_POST

from playground import history, limits, owners
from playground.backends import configured_backends, default_backend
from playground.forms import DEFAULTS, GenerateForm
from playground.rendering import render_plain
from playground.streaming import Run, cadence, finish, pump, sse_message

PAGE = "playground/compare.html"
MIN_COLUMNS, MAX_COLUMNS = 2, 4
# What each column sets; the rest of a run's parameters are the defaults.
COLUMN_FIELDS = ("backend", "temperature", "top_p", "max_tokens", "seed")
COLUMN_PRESETS = (
    {"temperature": 0.2, "top_p": 0.95},
    {"temperature": 0.8, "top_p": 0.95},
    {"temperature": 1.0, "top_p": 0.5},
    {"temperature": 0.0, "top_p": 1.0},
)


def _columns(request: HttpRequest) -> int:
    raw = request.GET.get("columns") or request.POST.get("columns") or "2"
    return min(MAX_COLUMNS, max(MIN_COLUMNS, int(raw) if raw.isdigit() else MIN_COLUMNS))


@require_GET
@ensure_csrf_cookie
def compare_page(request: HttpRequest) -> HttpResponse:
    from playground.views import EXAMPLE_PROMPT, model_picker

    count = _columns(request)
    columns = []
    backends = configured_backends()
    for n in range(count):
        initial = {**DEFAULTS, "backend": default_backend().id, **COLUMN_PRESETS[n]}
        form = GenerateForm(initial=initial, prefix=f"c{n}")
        columns.append({"n": n, "form": form, "picker": model_picker(backends, form)})
    context = {
        "columns": columns,
        "count": count,
        "choices": range(MIN_COLUMNS, MAX_COLUMNS + 1),
        "prompt": EXAMPLE_PROMPT,
    }
    return render(request, PAGE, context)


def column_form(post: QueryDict, n: int) -> GenerateForm:
    """Column `n`'s run: the shared prompt, its own fields, defaults for the rest."""
    data = QueryDict(mutable=True)
    for name, value in DEFAULTS.items():
        if name != "seed_random":
            data[name] = str(value)
    data["prompt"] = post.get("prompt", "")
    data["mode"] = "complete"
    for name in COLUMN_FIELDS:
        value = post.get(f"c{n}-{name}")
        if value is not None:
            data[name] = value
    if not data.get("seed"):
        data["seed_random"] = "on"
    return GenerateForm(data)


@require_POST
async def compare_run(request: HttpRequest) -> HttpResponse:
    count = _columns(request)
    forms = [column_form(request.POST, n) for n in range(count)]
    if not all(form.is_valid() for form in forms):
        status = 400 if any(form.is_unknown_backend for form in forms) else 422
        context = {"forms": list(enumerate(forms))}
        return render(request, f"{PAGE}#column-errors", context, status=status)
    owner = await owners.aowner_of(request)
    slots: list[limits.Slot] = []
    for _ in forms:
        slot = await limits.admit(request)
        if isinstance(slot, limits.Refusal):
            for taken in slots:
                taken.release()
            context = {"refusal": slot, "needed": len(forms)}
            response = render(request, f"{PAGE}#refused", context, status=slot.status)
            response["Retry-After"] = str(slot.retry_after)
            return response
        slots.append(slot)
    columns = [
        Column(
            n=n,
            run=Run(backend=form.selected_backend, request=form.to_request()),
            record=history.make_recorder(
                owner, None, history.params_from_cleaned(form.cleaned_data)
            ),
        )
        for n, form in enumerate(forms)
    ]

    async def body():
        try:
            async for chunk in relay_columns(columns):
                yield chunk
        finally:
            for slot in slots:
                slot.release()

    response = StreamingHttpResponse(body(), content_type="text/event-stream; charset=utf-8")
    response["Cache-Control"] = "no-cache, no-store"
    response["X-Accel-Buffering"] = "no"
    return response


@dataclass
class Column:
    n: int
    run: Run
    record: history.Recorder
    task: asyncio.Task | None = None
    ended: bool = False


async def relay_columns(columns: list[Column]):
    """All columns' runs in one event stream; see the module docstring."""
    queue: asyncio.Queue = asyncio.Queue()
    for column in columns:

        async def read(column: Column = column) -> None:
            try:
                await pump(column.run, lambda delta: queue.put_nowait((column, delta)))
            finally:
                queue.put_nowait((column, None))

        column.task = asyncio.create_task(read())
    yield sse_message(render_to_string(f"{PAGE}#start", {"columns": columns}))
    open_columns = len(columns)
    saves = {}
    try:
        while open_columns:
            batch = [await queue.get()]
            # Let the other columns' tokens gather too: one message for all of them.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(cadence()):
                    while len(batch) < 4096:
                        batch.append(await queue.get())
            while not queue.empty():
                batch.append(queue.get_nowait())
            texts: dict[int, list[str]] = {}
            ended: list[Column] = []
            for column, delta in batch:
                if delta is None:
                    ended.append(column)
                else:
                    texts.setdefault(column.n, []).append(column.run.add(delta))
            parts = [
                f'<pre id="c{n}-live" hx-swap-oob="beforeend"><span>{render_plain("".join(t))}'
                "</span></pre>"
                for n, t in texts.items()
                if "".join(t)
            ]
            for column in ended:
                column.ended = True
                open_columns -= 1
                saves[column.n] = history.keep(column.record(column.run, stopped=False))
                context = await finish(column.run)
                context["record"] = await asyncio.shield(saves[column.n])
                context["n"] = column.n
                parts.append(render_to_string(f"{PAGE}#column-end", context))
            if parts:
                yield sse_message("".join(parts))
        records = [await saves[c.n] for c in columns]
        ids = [r.pk if r is not None else None for r in records]
        yield sse_message(render_to_string(f"{PAGE}#all-done", {"ids": ids}))
        yield sse_message(json.dumps({"runs": ids}), event="done")
    finally:
        for column in columns:
            if column.task is not None and not column.task.done():
                column.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await column.task
            if not column.ended:
                # The browser went away (Stop, a closed tab): keep what each column had.
                history.keep(column.record(column.run, stopped=True))


# --- the diff of two runs --------------------------------------------------------------------


def _side(record) -> dict:
    tokens = record.tokens or []
    return {
        "record": record,
        "texts": [t[0] for t in tokens],
        "logprobs": [t[1] for t in tokens],
        "alternatives": [dict(t[2]) for t in tokens],
    }


def _probability(logprob) -> float | None:
    return None if logprob is None else math.exp(logprob)


def token_diff(a, b) -> dict:
    """The diff context of two runs: each side's tokens marked same/changed, and the fork."""
    left, right = _side(a), _side(b)
    fork = None
    for i, (x, y) in enumerate(zip(left["texts"], right["texts"], strict=False)):
        if x != y:
            fork = i
            break
    if fork is None and len(left["texts"]) != len(right["texts"]):
        fork = min(len(left["texts"]), len(right["texts"]))
    marks_left = ["same"] * len(left["texts"])
    marks_right = ["same"] * len(right["texts"])
    if fork is not None:
        # After the fork, re-align what is equal again (a line both runs wrote, say).
        matcher = difflib.SequenceMatcher(
            None, left["texts"][fork:], right["texts"][fork:], autojunk=False
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag != "equal":
                marks_left[fork + i1 : fork + i2] = ["changed"] * (i2 - i1)
                marks_right[fork + j1 : fork + j2] = ["changed"] * (j2 - j1)
    at_fork = None
    if fork is not None:

        def side_at(side, other):
            text = side["texts"][fork] if fork < len(side["texts"]) else None
            other_text = other["texts"][fork] if fork < len(other["texts"]) else None
            alts = side["alternatives"][fork] if fork < len(side["alternatives"]) else {}
            return {
                "text": text,
                "probability": _probability(side["logprobs"][fork]) if text is not None else None,
                "other": other_text,
                "other_probability": _probability(alts.get(other_text)),
                "other_listed": other_text in alts,
            }

        at_fork = {"left": side_at(left, right), "right": side_at(right, left)}
    for side, marks in ((left, marks_left), (right, marks_right)):
        side["tokens"] = [
            {"i": i, "text": text, "mark": "fork" if i == fork else mark}
            for i, (text, mark) in enumerate(zip(side["texts"], marks, strict=True))
        ]
    return {"left": left, "right": right, "sides": [left, right], "fork": fork, "at_fork": at_fork}


@require_GET
def diff(request: HttpRequest) -> HttpResponse:
    runs = owners.owned_runs(request)
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    context = {
        "choices": list(runs.defer("tokens")[:50]),
        "a": int(a) if a.isdigit() else None,
        "b": int(b) if b.isdigit() else None,
    }
    if a.isdigit() and b.isdigit():
        context.update(token_diff(get_object_or_404(runs, pk=a), get_object_or_404(runs, pk=b)))
    return render(request, "playground/diff.html", context)
