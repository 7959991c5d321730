"""Every upstream fault, through the app against the loopback server: a clear message in the
page, the text that arrived kept, and the run's status in its summary.

Faults already covered in tests/test_views.py (401/403/404/410/422/429/503 statuses, an HTML
500 page, a reset mid-stream, an error event, connection refused, a split multibyte character)
are not repeated here; this file adds the rest and the partial-output checks.

`check_recorded` asserts the stored run of each: its status, its error kind and message, and
its text equal to what the page showed. A run the browser leaves mid-stream is recorded as
stopped with its partial text, shown against real uvicorn at the end of this file.
"""

from __future__ import annotations

import json
import time

import pytest
from sse import post_stream
from test_views import FORM, final

TOKENS = ["a", "b", "c", "d", "e"]


def run_against(form_changes=None):
    form = {**FORM, "backend": "completions", "max_tokens": "16", **(form_changes or {})}
    status, _, events = post_stream("/generate", form)
    assert status == 200
    summary = json.loads(next(e.data for e in events if e.event == "done"))
    end = next(e.data for e in reversed(events) if not e.event)
    return events, end, summary


def shown_text(events) -> str:
    return "".join(t["text"] for t in final(events).tokens) or "".join(
        final(events).text_by_id.get("result", "")
    )


def check_recorded(summary: dict, *, status: str, error_kind: str | None, kept: str = "") -> None:
    """The summary says what happened, and the stored run agrees, with the text kept."""
    from playground.models import Run

    assert summary["status"] == status
    assert summary["error_kind"] == error_kind
    run = Run.objects.get()
    assert run.status == status
    assert run.error_kind == (error_kind or "")
    assert run.text == kept
    assert "".join(token[0] for token in run.tokens) == kept
    if status == "failed":
        assert run.error_message
        assert "ROOT_SECRET" not in run.error_message


@pytest.fixture
def short_timeouts(settings):
    settings.UPSTREAM_READ_TIMEOUT = 0.5
    settings.UPSTREAM_TOTAL_TIMEOUT = 1.5


@pytest.mark.parametrize(
    ("script", "kind", "kept"),
    [
        ({"fail": "stall_before_first_byte", "stall": 5}, "timeout", ""),
        ({"fail": "stall_mid_stream", "fail_after": 3, "stall": 5}, "timeout", "abc"),
        ({"fail": "never_ends", "fail_after": 3, "stall": 0.2}, "timeout", "abc"),
        ({"fail": "malformed_chunk", "fail_after": 3}, "protocol", "abc"),
        ({"fail": "reset_mid_stream", "fail_after": 3}, "unavailable", "abc"),
        ({"fail": "error_event", "fail_after": 3}, "unavailable", "abc"),
    ],
    ids=["stall-before-first-byte", "stall-mid-stream", "never-ends", "malformed-chunk",
         "reset-mid-stream", "error-event"],
)  # fmt: skip
def test_a_broken_stream_keeps_the_text_and_says_what_happened(
    completions_backend, short_timeouts, script, kind, kept
):
    completions_backend.script(dialect="vllm", tokens=TOKENS, **script)
    events, end, summary = run_against()
    assert 'role="alert"' in end
    if kept:
        assert [t["text"] for t in final(events).tokens] == list(kept)
        assert "kept below" in end
    check_recorded(summary, status="failed", error_kind=kind, kept=kept)


def test_a_stall_says_the_backend_sent_nothing(completions_backend, short_timeouts):
    completions_backend.script(dialect="vllm", fail="stall_before_first_byte", stall=5)
    _, end, summary = run_against()
    assert "The backend sent nothing" in end
    check_recorded(summary, status="failed", error_kind="timeout")


def test_an_upstream_that_never_ends_hits_the_total_deadline(completions_backend, short_timeouts):
    completions_backend.script(dialect="vllm", tokens=TOKENS, fail="never_ends", stall=0.2)
    events, end, summary = run_against()
    assert "time limit" in end
    check_recorded(summary, status="failed", error_kind="timeout", kept=shown_text(events))


def test_429_with_retry_after_tells_when_to_try_again(completions_backend):
    completions_backend.script(status=429, headers={"Retry-After": "12"})
    _, end, summary = run_against()
    assert "12" in end
    check_recorded(summary, status="failed", error_kind="rate_limited")


def test_a_500_html_page_with_a_secret_is_never_shown(completions_backend):
    secret = "ROOT_SECRET_XYZ-7731"
    completions_backend.script(status=500, body=f"<html><pre>{secret} db=10.0.0.5</pre></html>")
    events, end, summary = run_against()
    assert secret not in "".join(e.data for e in events)
    assert "10.0.0.5" not in "".join(e.data for e in events)
    assert 'role="alert"' in end
    check_recorded(summary, status="failed", error_kind="unavailable")


def test_a_retired_model_says_so(completions_backend):
    completions_backend.script(
        status=404, body={"error": {"message": "The model `old` does not exist"}}
    )
    _, end, summary = run_against()
    assert "not available" in end
    check_recorded(summary, status="failed", error_kind="not_found")


def test_connection_refused_is_recorded_as_unavailable(settings):
    from upstream import closed_port_url

    settings.COMPLETIONS_BASE_URL = closed_port_url()
    _, end, summary = run_against()
    assert "Could not reach the backend" in end
    check_recorded(summary, status="failed", error_kind="unavailable")


def test_a_browser_leaving_mid_stream_records_the_run_as_stopped_with_its_text(tmp_path, upstream):
    """Through real uvicorn: the client reads a few tokens and goes away (Stop, a closed tab).
    The run is in the app's database as stopped, with the text that had arrived, and the
    history panel lists it."""
    import html
    import re
    import sqlite3

    from conftest import run_app
    from live import FORM as LIVE_FORM
    from live import session
    from sse import parse_events

    tokens = [f"t{i} " for i in range(40)]
    upstream.script(tokens=tokens, chunk_delay=0.15)
    with run_app(tmp_path, COMPLETIONS_BASE_URL=upstream.base_url) as app:
        client = session(app.url)
        seen = b""
        with client.stream("POST", "/generate", data=LIVE_FORM) as response:
            assert response.status_code == 200
            for chunk in response.iter_bytes():
                seen += chunk
                if seen.count(b"<span>") >= 3:
                    break
        shown = "".join(
            html.unescape(re.sub(r"<[^>]+>", "", e.data))
            for e in parse_events(seen)
            if e.data.startswith("<span>")
        )
        assert shown.startswith("t0 ")

        database = sqlite3.connect(tmp_path / "db.sqlite3")
        deadline = time.monotonic() + 10
        while not (
            rows := database.execute(
                "SELECT status, text, error_kind, tokens FROM playground_run"
            ).fetchall()
        ):
            assert time.monotonic() < deadline, "the stopped run was not recorded"
            time.sleep(0.1)
        ((status, text, error_kind, stored_tokens),) = rows
        assert status == "stopped"
        assert error_kind == ""
        # Everything shown is kept, and nothing that was not received: a prefix of the whole.
        assert text.startswith(shown)
        assert "".join(tokens).startswith(text)
        assert len(text) < len("".join(tokens))
        assert "".join(t[0] for t in json.loads(stored_tokens)) == text
        # The history panel of this browser lists it as stopped.
        panel = client.get("/history").text
        assert 'data-status="stopped"' in panel
        assert "Stopped" in panel


def test_the_upstream_request_starts_before_the_body_is_read_and_a_dropped_body_stops_it(
    completions_backend,
):
    """`streaming.relay` opens the upstream stream as soon as it is called, so the connection
    and the model's prefill overlap with the response's way out; a body nobody reads (the
    browser left before the response started) closes the upstream connection when dropped."""
    import asyncio
    import gc

    from playground import streaming
    from playground.backends import get_backend
    from playground.completions import CompletionRequest

    upstream = completions_backend
    upstream.script(tokens=["tick"] * 200, chunk_delay=0.05)
    request = CompletionRequest(model="bigcode/starcoder2-7b", prompt="def f():", max_tokens=200)

    async def go():
        upstream.arrived.clear()
        body = streaming.relay(get_backend("completions"), request)
        # The request arrives with no byte of the body asked for (waited for in a thread, so
        # the loop runs the reader task meanwhile).
        arrived = await asyncio.to_thread(upstream.arrived.wait, 5)
        assert arrived, "the upstream request started before the body was read"
        del body
        gc.collect()
        # Waited for while the loop runs: at its end asyncio.run cancels every task anyway.
        closed = await asyncio.to_thread(upstream.requests[-1].disconnected.wait, 5)
        assert closed, "dropping the body closed the upstream stream"

    asyncio.run(go())
    assert not upstream.requests[-1].answered.is_set()


def test_the_wait_between_events_ends_when_the_run_ends(monkeypatch):
    """After each event the response waits for more tokens to gather (`_Feed.pause`), but never
    past the run's end: the last text and the final fragment must not wait out the window."""
    import asyncio

    from playground import streaming

    async def go():
        feed = streaming._Feed()
        upstream_done = asyncio.Event()

        async def pump(run, sink):
            await upstream_done.wait()

        monkeypatch.setattr(streaming, "pump", pump)
        reader = asyncio.create_task(feed.read(None))
        # A short window ends by itself while the run goes on.
        await asyncio.wait_for(feed.pause(0.001), 5)
        assert not reader.done()
        # An hour's window ends as soon as the reader does (the guard below would fail first).
        waiting = asyncio.create_task(feed.pause(3600))
        # Until it waits on its future: a pause started after the run's end returns at once,
        # which would not test the wake-up.
        while feed._pause is None:
            await asyncio.sleep(0)
        upstream_done.set()
        await asyncio.wait_for(waiting, 5)
        await reader
        # Once the run has ended, a pause returns at once.
        await asyncio.wait_for(feed.pause(3600), 5)

    asyncio.run(go())


def test_the_cadence_is_20_events_a_second_until_the_workers_budget_then_down_to_5():
    from playground.streaming import cadence

    # 12 streams at 20 a second are about the worker's 250 events a second; past that each
    # stream's events come further apart, and from 50 streams on at 5 a second, never fewer.
    assert [cadence(n) for n in (0, 1, 12)] == [0.05, 0.05, 0.05]
    assert cadence(15) == pytest.approx(0.06)
    assert cadence(25) == pytest.approx(0.1)
    assert cadence(40) == pytest.approx(0.16)
    assert [cadence(n) for n in (50, 200, 5000)] == [0.2, 0.2, 0.2]


def test_a_busy_worker_reads_and_writes_each_stream_at_the_busy_cadence(
    completions_backend, monkeypatch
):
    """With 59 other streams open, a run's reads pause and its events wait 0.2 s, and the run
    is counted among the open streams only while it reads."""
    import asyncio

    from playground import completions, streaming
    from playground.backends import get_backend
    from playground.completions import CompletionRequest

    completions_backend.script(tokens=["tick "] * 6, chunk_delay=0.01)
    request = CompletionRequest(model="bigcode/starcoder2-7b", prompt="def f():", max_tokens=6)
    monkeypatch.setattr(streaming, "_open_streams", 59)
    read_pauses, event_pauses, counted = [], [], []
    read_pause = completions._read_pause

    def recorded_read_pause(interval, *args):
        read_pauses.append(interval)
        counted.append(streaming._open_streams)
        return read_pause(interval, *args)

    async def recorded_event_pause(feed, seconds):
        event_pauses.append(seconds)

    monkeypatch.setattr(completions, "_read_pause", recorded_read_pause)
    monkeypatch.setattr(streaming._Feed, "pause", recorded_event_pause)

    async def go():
        body = streaming.relay(get_backend("completions"), request)
        return b"".join([chunk async for chunk in body])

    text = asyncio.run(go()).decode()
    assert "tick tick" in text
    assert read_pauses
    assert set(read_pauses) == {0.2}
    assert event_pauses
    assert set(event_pauses) == {0.2}
    assert set(counted) == {60}
    assert streaming._open_streams == 59
