"""One generation, from a backend's deltas to the browser's event stream.

The browser's form posts to `views.generate`, which answers with `relay(...)` as a
`text/event-stream`. htmx 4's SSE extension swaps each unnamed `data:` message into the page as it
arrives; the messages are HTML fragments we build (text is always escaped):

1. a reset: out-of-band swaps that clear the previous result, errors and status;
2. the streamed text, escaped, appended to the live area (`#live`), coalesced so that a fast
   backend produces 20 events a second rather than one per token (down to 5 a second when the
   worker relays many streams at once: see `cadence`);
3. a final message that replaces the live text with the server-rendered completion (Pygments
   highlighting merged with per-token probability spans, from `rendering.py`), the stats line and,
   if the run failed, a short message saying what happened while the text so far stays;
4. a named `done` event whose data is the run summary as JSON, for scripts and tests.

Reading the upstream happens in its own task so that a slow consumer never stalls it and the
coalescing timer never interrupts a read. If the browser goes away (Stop, a closed tab) Django
cancels this generator; the `finally` cancels the reader, whose `async with` closes the upstream
connection at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import math
import time
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

from django.conf import settings
from django.template.loader import render_to_string

from playground import completions, offline
from playground.backends import Backend
from playground.completions import (
    CompletionRequest,
    Delta,
    ErrorKind,
    LogprobStatus,
    Token,
    UpstreamError,
    Usage,
)
from playground.forms import GenerateForm
from playground.history import keep
from playground.rendering import render_completion, render_plain

log = logging.getLogger(__name__)

# One event per token costs the browser a swap each and this worker a write each: text is sent
# at most 20 times a second, as smooth as reading needs (docs/PERFORMANCE.md measures the CPU).
COALESCE_SECONDS = 0.05
# An event costs the worker about the same whatever it carries (a read, a write, their
# wake-ups), so a worker relaying many streams spends its CPU on events, not tokens. Past
# EVENTS_PER_SECOND text events a second in all (12 streams at 20 a second), each stream's
# events carry more tokens instead, down to 5 a second (BUSY_COALESCE_SECONDS) from 50 open
# streams on: see `cadence`. A lone user, or a team's handful, keeps 20 a second. Under load a
# read through httpx and its event's write through Django cost about 0.14 ms together: at 200
# streams, 5 events a second instead of 10 took a ninth off the worker's CPU per token, and at
# 50 streams a twentieth (docs/PERFORMANCE.md).
BUSY_COALESCE_SECONDS = 0.2
EVENTS_PER_SECOND = 250
# Proxies close idle connections; a comment line keeps a long prefill alive.
PING_SECONDS = 15.0
PAGE = "playground/page.html"
# Every field with a message slot beside it on the page (the checkbox shares the seed's).
ERROR_SLOTS = tuple(name for name in GenerateForm.base_fields if name != "seed_random")

_open_streams = 0  # backend streams this process is reading now (see pump)


def cadence(streams: int | None = None) -> float:
    """Seconds between one stream's text events with `streams` open in this process (by default,
    as many as are open now): COALESCE_SECONDS while all of them together stay within
    EVENTS_PER_SECOND, longer past it, never more than BUSY_COALESCE_SECONDS.

    The upstream is read at the same pace: a paced upstream sends one chunk per token, and a
    read with its wake-up costs more than the chunk's parsing. Its pause starts only after the
    first text (the first token is never delayed) and stops once a finish_reason or max_tokens
    tokens arrived (nor is the run's end): see `completions.stream_completion`.
    """
    if streams is None:
        streams = _open_streams
    return min(BUSY_COALESCE_SECONDS, max(COALESCE_SECONDS, streams / EVENTS_PER_SECOND))


@dataclass
class Run:
    """What has arrived so far in one generation, and when."""

    backend: Backend
    request: CompletionRequest
    started: float = field(default_factory=time.perf_counter)
    first_token_at: float | None = None
    ended_at: float | None = None
    text_parts: list[str] = field(default_factory=list)
    tokens: list[Token] = field(default_factory=list)
    statuses: set[LogprobStatus] = field(default_factory=set)
    finish_reason: str | None = None
    usage: Usage | None = None
    error: UpstreamError | None = None

    @property
    def text(self) -> str:
        return "".join(self.text_parts)

    @property
    def logprobs(self) -> LogprobStatus:
        if LogprobStatus.REAL in self.statuses:
            return LogprobStatus.REAL
        if LogprobStatus.PLACEHOLDER in self.statuses:
            return LogprobStatus.PLACEHOLDER
        return LogprobStatus.ABSENT

    def add(self, delta: Delta) -> str:
        if delta.usage is not None:
            self.usage = delta.usage  # hosted NIM's usage grows chunk by chunk: keep the last
        if delta.finish_reason:
            self.finish_reason = delta.finish_reason
        if not delta.text:
            return ""
        if self.first_token_at is None:
            self.first_token_at = time.perf_counter()
        self.text_parts.append(delta.text)
        self.statuses.add(delta.logprobs)
        if delta.logprobs is LogprobStatus.REAL:
            self.tokens.extend(delta.tokens)  # the client guarantees they spell delta.text
        else:
            # Text that came without probabilities still gets a token, shown untinted, so the
            # tokens always spell the whole text when other chunks did carry probabilities.
            self.tokens.append(Token(text=delta.text, logprob=None))
        return delta.text

    def summary(self, rendered_tokens: int, mean_logprob: float | None) -> dict:
        end = self.ended_at or time.perf_counter()
        total = end - self.started
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        usage = self.usage or Usage()
        completion_tokens = usage.completion_tokens or rendered_tokens or None
        decode_time = total - (ttft or 0.0)
        rate = None
        if completion_tokens and completion_tokens > 1 and decode_time > 0:
            # Tokens after the first over the time after the first: the decode speed a user
            # feels, not diluted by the prefill that time-to-first-token already reports.
            rate = (completion_tokens - 1) / decode_time
        return {
            "status": "failed" if self.error else "complete",
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": completion_tokens,
            "ttft_ms": None if ttft is None else round(ttft * 1000),
            "total_ms": round(total * 1000),
            "tokens_per_second": None if rate is None else round(rate, 1),
            "finish_reason": self.finish_reason,
            "mean_logprob": None if mean_logprob is None else round(mean_logprob, 4),
            "perplexity": None if mean_logprob is None else round(math.exp(-mean_logprob), 3),
            "logprobs": self.logprobs.value,
            "error_kind": self.error.kind.value if self.error else None,
        }


def sse_message(data: str, event: str | None = None) -> bytes:
    """Frame one SSE message. Newlines inside `data` become several `data:` lines, which the
    browser joins back with newlines; a bare CR would also end a line, so it is escaped."""
    # Three passes in C: a run's final message (its rendered completion and tooltip data) has
    # hundreds of lines, and a formatted string per line was an eighth of its cost.
    body = "data: " + data.replace("\r", "&#13;").replace("\n", "\ndata: ") + "\n\n"
    return (f"event: {event}\n{body}" if event else body).encode()


def open_deltas(backend: Backend, request: CompletionRequest) -> AsyncIterator[Delta]:
    if backend.is_offline:
        return offline.stream_completion(
            request, tokens_per_second=settings.OFFLINE_MODEL_TOKENS_PER_SECOND
        )
    return completions.stream_completion(
        completions.get_client(), backend, request, read_interval=cadence
    )


def relay(
    backend: Backend,
    request: CompletionRequest,
    *,
    record=None,
    on_end: Callable[[], None] | None = None,
) -> AsyncIterator[bytes]:
    """The body of the generate response: bytes of `text/event-stream`.

    The upstream request starts now, in its own task, not when the server first asks the body
    for bytes: the task runs as soon as the response's way out through the middleware first
    yields, so its connection and the model's prefill overlap with the rest of it (0.4 ms of
    the first token's time in the bench's A/B, docs/PERFORMANCE.md). A body that is never
    iterated (the browser left before the response started) stops that task when dropped.

    `record(run, stopped=...)`, if given, is awaited once when the run ends and its result is
    handed to the `run-end` partial as `record`. If the browser goes away first, it still runs
    (as a task the cancellation does not reach) with `stopped=True`: see `history.py`.

    `on_end()`, if given, is called once the body has ended, failed or been closed, or when a
    body that was never iterated is dropped (then perhaps on another thread, and perhaps once
    more after it ended: it must allow both). `limits.Slot.release` frees the run's generation
    slot this way: the body calls it itself rather than through a generator wrapped around it,
    as every message and every wait of the stream passes through each such layer
    (docs/PERFORMANCE.md).
    """
    run = Run(backend=backend, request=request)
    feed = _Feed()
    reader = asyncio.create_task(feed.read(run))
    body = _events(run, feed, reader, record, on_end)
    weakref.finalize(body, _dropped, asyncio.get_running_loop(), reader, on_end)
    return body


class _Feed:
    """What the reader task hands the response: the deltas so far, and whether it is done."""

    def __init__(self) -> None:
        self.queue: list[Delta] = []
        self.wake = asyncio.Event()
        self.finished = asyncio.Event()
        self._pause: asyncio.Future | None = None  # see pause()

    def push(self, delta: Delta) -> None:
        self.queue.append(delta)
        self.wake.set()

    async def read(self, run: Run) -> None:
        try:
            await pump(run, self.push)
        finally:
            self.finished.set()
            self.wake.set()
            _resolve(self._pause)

    async def pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the run finishes meanwhile.

        One future, resolved by a timer or by the end of `read`: the usual way (a timeout around
        `finished.wait()`) cancels the waiting task each time the timer fires, and this wait
        ends by its timer after nearly every event, about 100 times per 1,000 tokens
        (docs/PERFORMANCE.md: 7 µs against 2 µs, timed apart)."""
        if self.finished.is_set():
            return
        loop = asyncio.get_running_loop()
        self._pause = waiter = loop.create_future()
        timer = loop.call_later(seconds, _resolve, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._pause = None


def _resolve(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _dropped(
    loop: asyncio.AbstractEventLoop, task: asyncio.Task, on_end: Callable[[], None] | None
) -> None:
    # A dropped generator may be collected on another thread; a task is cancelled on its loop.
    if not task.done() and not loop.is_closed():
        loop.call_soon_threadsafe(task.cancel)
    if on_end is not None:
        on_end()


async def _events(
    run: Run, feed: _Feed, reader: asyncio.Task, record, on_end: Callable[[], None] | None
) -> AsyncIterator[bytes]:
    try:
        ended = False
        queue, wake, finished = feed.queue, feed.wake, feed.finished
        try:
            yield run_start(run.backend.label)
            while True:
                if not queue and not finished.is_set():
                    if run.first_token_at is None:
                        try:
                            async with asyncio.timeout(PING_SECONDS):
                                await wake.wait()
                        except TimeoutError:
                            yield b": ping\n\n"
                            continue
                    else:
                        await wake.wait()
                wake.clear()
                batch = queue[:]
                queue.clear()
                text = "".join([run.add(delta) for delta in batch])
                if text:
                    # Wrapped in an element: htmx skips a swap whose fragment is only
                    # whitespace, and a chunk of code is often just a newline and an indent.
                    yield sse_message(f"<span>{render_plain(text)}</span>")
                if finished.is_set() and not queue:
                    ended = True
                    break
                if text:
                    # Let the next tokens gather, but end the wait as soon as the run finishes.
                    await feed.pause(cadence())
        finally:
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
            if record is not None:
                run.ended_at = time.perf_counter()
                # A task of its own: if the browser went away (Stop, a closed tab), this
                # generator is being cancelled, and the save must outlive it with the text that
                # had arrived.
                saving = keep(record(run, stopped=not ended))
        context = await finish(run)
        if record is not None:
            # Shielded: a disconnect while rendering or saving must not lose the run.
            context["record"] = await asyncio.shield(saving)
        # In a worker thread, like the render: the run-end fragment (the overview's gutter, the
        # history item) is a few milliseconds of template work the other streams need not wait
        # for.
        end = await asyncio.to_thread(render_to_string, f"{PAGE}#run-end", context)
        yield sse_message(end)
        yield sse_message(json.dumps(context["summary"]), event="done")
    finally:
        if on_end is not None:
            on_end()


@functools.lru_cache(maxsize=64)
def run_start(label: str) -> bytes:
    """The first message of a run, which clears the last one's output: the same for every run
    of a backend, so rendered once (it is on the way to every first token)."""
    start = {"backend": {"label": label}, "error_slots": ERROR_SLOTS}
    return sse_message(render_to_string(f"{PAGE}#run-start", start))


async def pump(run: Run, sink: Callable[[Delta], None]) -> None:
    """Feed the backend's deltas to `sink` until the run ends; a failure is kept on the run."""
    global _open_streams
    _open_streams += 1  # one event loop per process: no lock needed
    try:
        # aclosing: however this ends (cancelled by a disconnect included), the backend's
        # generator is closed at once, and with it the upstream connection.
        async with contextlib.aclosing(open_deltas(run.backend, run.request)) as deltas:
            async for delta in deltas:
                sink(delta)
    except UpstreamError as exc:
        run.error = exc
    except Exception:
        log.exception("generation failed on backend %s", run.backend.id)
        run.error = UpstreamError(
            ErrorKind.PROTOCOL, "Something went wrong while generating. Try again."
        )
    finally:
        _open_streams -= 1


async def finish(run: Run) -> dict:
    """Render an ended run: the template context of its result and stats."""
    run.ended_at = run.ended_at or time.perf_counter()
    # Highlighting a long completion is ~10-20 ms of CPU: off the event loop, so the other
    # streams this worker relays keep flowing.
    rendered = await asyncio.to_thread(
        render_completion,
        prompt=run.request.prompt,
        tokens=run.tokens,
        text=run.text,
        logprobs=run.logprobs,
        alternatives_shown=run.request.logprobs,
    )
    summary = run.summary(rendered.token_count, rendered.mean_logprob)
    return {"run": run, "rendered": rendered, "summary": summary, "backend": run.backend}


async def generate_whole(backend: Backend, request: CompletionRequest, *, record=None) -> dict:
    """A run without streaming, for a browser without JavaScript: the page comes back whole."""
    run = Run(backend=backend, request=request)
    await pump(run, run.add)
    context = await finish(run)
    if record is not None:
        context["record"] = await record(run, stopped=False)
    return context
