"""Reliable calls, shown against a loopback server that fails on cue: retries happen before the
first token only, Retry-After is honoured up to a cap, and an exhausted pool answers at once."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from test_views import final, run, summary, upstream_form

from playground import completions
from playground.backends import Backend
from playground.completions import CompletionRequest, UpstreamError


@pytest.fixture
def retrying(settings, completions_backend):
    settings.UPSTREAM_RETRIES = 2
    settings.UPSTREAM_RETRY_BACKOFF = 0.01
    settings.UPSTREAM_RETRY_MAX_WAIT = 0.5
    return completions_backend


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503])
def test_a_failure_before_the_first_token_is_retried_and_the_run_succeeds(retrying, status):
    retrying.script(status=status)
    retrying.script(dialect="vllm", tokens=["ok", "!"])
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 2
    assert [t["text"] for t in final(events).tokens] == ["ok", "!"]
    assert summary(events)["status"] == "complete"


def test_a_dropped_connection_before_any_output_is_retried(retrying):
    retrying.script(fail="close_before_response")
    retrying.script(dialect="vllm", tokens=["fine"])
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 2
    assert summary(events)["status"] == "complete"


@pytest.mark.parametrize("status", [400, 401, 404, 410, 422])
def test_client_errors_are_not_retried(retrying, status):
    retrying.script(status=status)
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 1
    assert summary(events)["status"] == "failed"


def test_retries_stop_after_the_configured_number(retrying):
    for _ in range(3):
        retrying.script(status=503)
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 3  # the first try and two retries
    assert "HTTP 503" in events[-2].data


def test_never_a_retry_after_output_has_started(retrying):
    retrying.script(dialect="vllm", tokens=["a", "b", "c", "d"], fail="reset_mid_stream")
    retrying.script(dialect="vllm", tokens=["SECOND"])
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 1
    assert [t["text"] for t in final(events).tokens] == ["a", "b"]
    assert "SECOND" not in "".join(e.data for e in events)
    assert summary(events)["status"] == "failed"


def test_an_error_event_after_output_is_reported_not_retried(retrying):
    retrying.script(dialect="vllm", tokens=["x", "y", "z"], fail="error_event")
    _, _, events = run(upstream_form())
    assert len(retrying.requests) == 1
    assert 'role="alert"' in events[-2].data


def test_retry_after_is_honoured(retrying):
    retrying.script(status=429, headers={"Retry-After": "0.3"})
    retrying.script(dialect="vllm", tokens=["ok"])
    started = time.monotonic()
    _, _, events = run(upstream_form())
    assert time.monotonic() - started >= 0.3
    assert len(retrying.requests) == 2
    assert summary(events)["status"] == "complete"


def test_a_retry_after_beyond_the_cap_is_not_waited_for(retrying):
    retrying.script(status=429, headers={"Retry-After": "120"})
    started = time.monotonic()
    _, _, events = run(upstream_form())
    assert time.monotonic() - started < 5
    assert len(retrying.requests) == 1
    assert "try again in 120 s" in events[-2].data


def test_a_stalled_backend_hits_the_read_gap_timeout(settings, completions_backend):
    settings.UPSTREAM_READ_TIMEOUT = 0.3
    completions_backend.script(dialect="vllm", fail="stall_mid_stream", stall=5)
    _, _, events = run(upstream_form())
    assert "sent nothing for 0.3 s" in events[-2].data


def test_the_total_deadline_ends_a_run_that_never_ends(settings, completions_backend):
    settings.UPSTREAM_TOTAL_TIMEOUT = 0.5
    completions_backend.script(dialect="vllm", fail="never_ends")
    started = time.monotonic()
    _, _, events = run(upstream_form())
    assert time.monotonic() - started < 5
    assert "0.5 s time limit" in events[-2].data


def test_an_exhausted_pool_answers_busy_at_once(settings, upstream):
    settings.UPSTREAM_RETRIES = 2
    settings.UPSTREAM_POOL_TIMEOUT = 0.1
    upstream.script(dialect="vllm", fail="stall_before_first_byte", stall=5)
    backend = Backend(id="t", label="T", kind="openai", model="m", base_url=upstream.base_url)
    request = CompletionRequest(model="m", prompt="p", max_tokens=4)

    async def go():
        client = completions.make_client(max_connections=1)
        try:

            async def first():
                with contextlib.suppress(UpstreamError):
                    async for _ in completions.stream_completion(client, backend, request):
                        pass

            hog = asyncio.create_task(first())
            while not upstream.requests:
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(UpstreamError) as caught:
                async for _ in completions.stream_completion(client, backend, request):
                    pass
            elapsed = time.monotonic() - started
            hog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hog
            return caught.value, elapsed
        finally:
            await client.aclose()

    error, elapsed = asyncio.run(go())
    assert "busy" in error.message
    assert elapsed < 1.0  # the pool timeout, and no retries for our own busy pool
    assert len(upstream.requests) == 1
