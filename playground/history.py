"""Recording runs, and showing them again.

`streaming.relay` calls a recorder once, when a run ends (never per token: the stream is not
slowed by database writes). A run the user stops ends with the browser disconnecting, which makes
Django cancel the response's generator; its recorder is then started as a task that the
cancellation does not reach, held in `_pending` until it is done (the event loop keeps only weak
references to tasks).

Every save of a process goes through one thread, `Saver`, on one database connection that it keeps
while runs keep ending, and runs that end together are written in one transaction: opening a
connection and committing were most of a short run's cost to the worker (docs/PERFORMANCE.md).

Tokens are stored in the compact shape of `rendering`'s tooltip data,
`[text, logprob|null, [[alt, logprob], ...]]`, and turned back into `Token`s to render a past run
with the same highlighting and tooltips.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import queue
import re
import threading
from collections.abc import Awaitable, Callable, Coroutine
from itertools import chain
from operator import itemgetter

from django import db, forms
from django.db import transaction

from playground.backends import get_backend
from playground.branching import navigator
from playground.completions import Alternative, LogprobStatus, Token
from playground.forms import GenerateForm, encode_stop
from playground.models import Run as RunRecord
from playground.models import RunStatus
from playground.owners import Owner
from playground.rendering import RenderedCompletion, render_completion

log = logging.getLogger(__name__)

_pending: set[asyncio.Task] = set()

# The parameters of a run as the form names them; the prompt is kept in its own column.
PARAM_FIELDS = tuple(name for name in GenerateForm.base_fields if name != "prompt")


def _finite(value: float | None) -> float | None:
    # JSON has no nan or infinity; a broken backend may still send them.
    return value if value is not None and math.isfinite(value) else None


# NUL cannot be stored by PostgreSQL (text or jsonb) and a lone surrogate cannot be encoded as
# UTF-8 by any database: either would lose the whole run. Each becomes U+FFFD, as on the page.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(value):
    """`value` (a string, or JSON of strings) with NUL and lone surrogates as U+FFFD."""
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list | tuple):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


_FIRST = itemgetter(0)
_SECOND = itemgetter(1)
_ALTERNATIVES = itemgetter(2)


def tokens_to_json(tokens) -> list:
    """`[[text, logprob|null, [[alt_text, alt_logprob], ...]], ...]`, what `Run.tokens` holds.

    A token's alternatives go in as they are when they are plain `(text, logprob)` pairs with
    finite logprobs (what the read path makes), which orjson writes as arrays: a list per
    alternative made the save's share of a run's CPU larger than the final render's lexing.
    Named tuples (orjson refuses them) and non-finite logprobs (JSON has none: such an
    alternative is left out) take the element-wise way.
    """
    data = []
    for t in tokens:
        alternatives = t.alternatives
        if alternatives and (type(alternatives[0]) is not tuple or not _finite_pairs(alternatives)):
            alternatives = [[text, lp] for text, lp in alternatives if math.isfinite(lp)]
        data.append([t.text, _finite(t.logprob), alternatives])
    return data


def _finite_pairs(pairs) -> bool:
    """Whether every logprob is finite: their sum is finite only then (or it overflows, and a
    false no costs only the slow way). The read path makes a token's pairs all alike; were a
    named tuple among plain ones, orjson would refuse it and `TokensEncoder` fall back to json,
    which writes it as an array all the same."""
    try:
        total = sum(map(_SECOND, pairs))
    except TypeError:
        return False
    return total - total == 0.0


def storable_tokens(data: list) -> list:
    """`storable(data)` for `tokens_to_json`'s shape: one scan of all its strings, and the
    element by element copy only when one of them needs a replacement (rarely)."""
    strings = list(map(_FIRST, data))
    strings += map(_FIRST, chain.from_iterable(map(_ALTERNATIVES, data)))
    if _UNSTORABLE.search("".join(strings)) is None:
        return data
    return storable(data)


def tokens_from_json(data: list) -> list[Token]:
    return [
        Token(
            text=text,
            logprob=logprob,
            alternatives=tuple(Alternative(text=a, logprob=lp) for a, lp in alternatives),
        )
        for text, logprob, alternatives in data
    ]


def params_from_cleaned(cleaned: dict) -> dict:
    """A validated form's parameters as JSON (the backend's key never is one of them)."""
    params = {}
    for name in PARAM_FIELDS:
        value = cleaned.get(name)
        params[name] = list(value) if isinstance(value, tuple) else value
    return params


def params_from_post(data) -> dict:
    """The editor's fields as typed (valid or not), for the draft; stop sequences decoded."""
    from playground.forms import decode_stop

    params = {}
    for name, field in GenerateForm.base_fields.items():
        if name == "prompt":
            continue
        if name == "stop":
            params[name] = [decode_stop(v) for v in data.getlist(name) if v][:8]
        elif isinstance(field, forms.BooleanField):
            params[name] = data.get(name) not in (None, "", "false", "off")
        else:
            value = data.get(name)
            if value is not None:
                params[name] = str(value)[:200]
    return storable(params)


def form_initial(prompt: str, params: dict) -> dict:
    """Initial values of the editor's form from stored parameters."""
    initial = {k: v for k, v in params.items() if k in GenerateForm.base_fields}
    if not get_backend(str(initial.get("backend") or "")):
        initial.pop("backend", None)  # a backend this deployment no longer has: the default
    initial["stop"] = tuple(params.get("stop") or ())
    initial["prompt"] = prompt
    return initial


def encoded_stops(params: dict) -> list[str]:
    return [encode_stop(s) for s in params.get("stop") or ()]


def status_of(run, *, stopped: bool) -> str:
    if run.error is not None:
        return RunStatus.FAILED
    return RunStatus.STOPPED if stopped else RunStatus.COMPLETE


def make_recorder(
    owner: Owner,
    session_id: int | None,
    params: dict,
    *,
    parent_id: int | None = None,
    branch_index: int | None = None,
):
    """The callback `streaming.relay` calls when a run ends: saves it, returns the record.

    A branch (see `branching.py`) names its parent run and the token it branched at. The record
    comes back with `branch_nav`, the navigator's rows, computed here in the worker thread so
    that the stream's final message needs no database query on the event loop.
    """

    def save(run, stopped: bool) -> RunRecord:
        end = run.ended_at or run.started
        ttft = None if run.first_token_at is None else run.first_token_at - run.started
        usage = run.usage
        # No savepoint of its own: in a batch the saver gives each save one already, and a save
        # alone gets its transaction from this block, so a failure here is rolled back either
        # way; two SQL statements fewer for every run of a batch.
        with transaction.atomic(savepoint=False):
            record = RunRecord.objects.create(
                **owner.fields(),
                session_id=session_id,
                params=storable(params),
                prompt=storable(run.request.prompt),
                backend=run.backend.id,
                model=run.request.model or run.backend.model,
                text=storable(run.text),
                tokens=storable_tokens(tokens_to_json(run.tokens)),
                logprobs=run.logprobs.value,
                ttft_ms=None if ttft is None else round(ttft * 1000),
                total_ms=round((end - run.started) * 1000),
                prompt_tokens=usage.prompt_tokens if usage else None,
                completion_tokens=(usage.completion_tokens if usage else None)
                or len(run.tokens)
                or None,
                finish_reason=run.finish_reason or "",
                status=status_of(run, stopped=stopped),
                error_kind=run.error.kind.value if run.error else "",
                error_message=storable(run.error.message) if run.error else "",
                parent_run_id=parent_id,
                branch_index=branch_index,
            )
            if session_id is not None:
                # Touch the session so the list shows it as recently used.
                record.session.save(update_fields=["updated_at"])
        record.branch_nav = navigator(record) if parent_id is not None else []
        return record

    async def record(run, *, stopped: bool) -> RunRecord | None:
        try:
            return await saver.run(save, run, stopped)
        except Exception:
            log.exception("could not save a run")
            return None

    return record


class Saver:
    """One thread that runs the process's saves in order, on a connection it keeps.

    A save is a function of the ORM (it runs in this thread, so Django gives it this thread's
    connection). The saves waiting when the thread wakes are run in one transaction, each in a
    savepoint, so one that fails (whatever it was doing) is rolled back alone and the others
    stay. If the commit itself fails (SQLite checks foreign keys only then: a session deleted
    meanwhile), each save of the batch is run again on its own.
    The connection is closed after a database error and whenever the thread has waited
    `idle_seconds` for work, so an idle worker holds none (and PostgreSQL can drop a test
    database).
    """

    def __init__(self, idle_seconds: float = 5.0) -> None:
        self.idle_seconds = idle_seconds
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, fn: Callable, *args) -> asyncio.Future:
        """`fn(*args)` in the saver's thread; a future of its result for the running loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((fn, args, loop, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="saver", daemon=True)
                self._thread.start()
        return future

    def stop(self) -> None:
        """Finish the saves queued, close the connection and end the thread (it starts again
        on the next save). Blocking: from async code, call it in a thread."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            self._queue.put(None)
        thread.join()

    def _work(self) -> None:
        try:
            while True:
                try:
                    item = self._queue.get(timeout=self.idle_seconds)
                except queue.Empty:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
                    continue
                batch = [item]
                while not self._queue.empty():
                    batch.append(self._queue.get())
                stop = None in batch
                self._save([job for job in batch if job is not None])
                if stop:
                    with self._lock:
                        if self._queue.empty():
                            self._thread = None
                            return
        finally:
            db.connection.close()

    def _save(self, batch: list) -> None:
        if not batch:
            return
        if len(batch) > 1:
            outcomes = []
            try:
                with transaction.atomic():
                    for fn, args, *_ in batch:
                        outcomes.append(_outcome(fn, args, savepoint=True))
                    if db.connection.needs_rollback:
                        raise _BatchBroken  # nothing of it would be kept: save them one by one
            except Exception:
                # The commit failed: nothing of the batch is written. Each save alone, then.
                db.connection.close()
            else:
                for (_, _, loop, future), outcome in zip(batch, outcomes, strict=True):
                    _settle(loop, future, outcome)
                return
        for fn, args, loop, future in batch:
            outcome = _outcome(fn, args, savepoint=False)
            if isinstance(outcome, BaseException):
                db.connection.close()  # a broken connection is not used again
            _settle(loop, future, outcome)


class _BatchBroken(Exception):
    pass


def _outcome(fn: Callable, args: tuple, *, savepoint: bool):
    try:
        if savepoint:
            with transaction.atomic():
                return fn(*args)
        return fn(*args)
    except Exception as exc:
        return exc


def _settle(loop: asyncio.AbstractEventLoop, future: asyncio.Future, outcome) -> None:
    def settle() -> None:
        if future.cancelled():
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting any more
        loop.call_soon_threadsafe(settle)


saver = Saver()


def keep(coro: Coroutine) -> asyncio.Task:
    """Run `coro` to its end even if the caller is cancelled."""
    task = asyncio.get_running_loop().create_task(coro)
    _pending.add(task)
    task.add_done_callback(_pending.discard)
    return task


async def drain() -> None:
    """Wait for the saves still running (tests, shutdown)."""
    while _pending:
        await asyncio.gather(*list(_pending), return_exceptions=True)


Recorder = Callable[..., Awaitable[RunRecord | None]]


def render_record(record: RunRecord) -> RenderedCompletion:
    return render_completion(
        prompt=record.prompt,
        tokens=tokens_from_json(record.tokens),
        text=record.text,
        logprobs=LogprobStatus(record.logprobs),
        alternatives_shown=int((record.params or {}).get("logprobs") or 5),
    )
