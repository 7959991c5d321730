"""Each dialect, driven through the app's generate endpoint against the loopback upstream.

For hosted NIM, self-hosted NIM/vLLM, OpenAI legacy, llama.cpp, Ollama and TGI: what went over
the wire (only fields the dialect accepts), the rendered tokens, the tooltip data or the honest
"no probabilities" note, usage in the stats, and the dialect's error bodies.
"""

from __future__ import annotations

import pytest
import tooltips
from test_views import final, run, summary, upstream_form

TOKENS = ["    return", " a", " +", " b", "\n"]
ALWAYS = {"model", "prompt", "max_tokens", "stream"}
SAMPLING = {"temperature", "top_p", "frequency_penalty", "presence_penalty", "seed"}


@pytest.fixture
def dialect_backend(completions_backend, settings):
    def use(dialect: str):
        settings.COMPLETIONS_DIALECT = dialect
        return completions_backend

    return use


def tooltip_data(events) -> list:
    return tooltips.entries([e for e in events if not e.event][-1].data)


@pytest.mark.parametrize(
    ("dialect", "upstream_dialect", "expected_fields"),
    [
        ("nim-hosted", "nim", ALWAYS | SAMPLING | {"logprobs"}),
        ("vllm", "vllm", ALWAYS | SAMPLING | {"logprobs", "stream_options"}),
        ("openai", "openai", ALWAYS | SAMPLING | {"logprobs", "stream_options"}),
        ("llamacpp", "llamacpp", ALWAYS | SAMPLING | {"logprobs", "stream_options"}),
        ("ollama", "ollama", ALWAYS | SAMPLING | {"stream_options"}),
        ("tgi", "tgi", ALWAYS | SAMPLING - {"presence_penalty"}),
    ],
)
def test_only_fields_the_dialect_accepts_are_sent(
    dialect_backend, dialect, upstream_dialect, expected_fields
):
    upstream = dialect_backend(dialect)
    upstream.script(dialect=upstream_dialect)
    run(upstream_form())
    (request,) = upstream.requests
    assert set(request.json) == expected_fields
    assert "suffix" not in request.json


def test_hosted_nim_placeholder_logprobs_growing_usage_and_a_retired_model(dialect_backend):
    upstream = dialect_backend("nim-hosted")
    upstream.script(dialect="nim", tokens=TOKENS, prompt_tokens=11)
    _, _, events = run(upstream_form())
    end = events[-2].data
    assert "placeholder probabilities" in end  # never a fake 100 %
    assert not final(events).tokens
    assert "return" in end
    stats = summary(events)
    assert stats["logprobs"] == "placeholder"
    # Usage grows chunk by chunk; the last one counts.
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (11, len(TOKENS))

    for status in (404, 410):
        upstream.script(dialect="nim", status=status, error_message="Function 'x': Not found")
        _, _, events = run(upstream_form())
        assert "not available on this backend (unknown or retired)" in events[-2].data
        assert "Function" not in events[-2].data


def test_vllm_real_logprobs_with_alternatives_and_usage(dialect_backend):
    upstream = dialect_backend("vllm")
    upstream.script(dialect="vllm", tokens=TOKENS, alternatives=3, prompt_tokens=9)
    _, _, events = run(upstream_form(logprobs="3"))
    assert upstream.requests[-1].json["logprobs"] == 3
    fragment = final(events)
    assert [t["text"] for t in fragment.tokens] == TOKENS
    data = tooltip_data(events)
    assert data[0][0] == "    return"
    assert data[0][1] == pytest.approx(-0.1)
    assert len(data[0][2]) == 3
    stats = summary(events)
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (9, 5)
    assert stats["logprobs"] == "real"


def test_vllm_error_is_shown_with_its_message(dialect_backend):
    upstream = dialect_backend("vllm")
    upstream.script(dialect="vllm", status=400, error_message="max_tokens is too large")
    _, _, events = run(upstream_form())
    assert "rejected the request: max_tokens is too large" in events[-2].data


def test_openai_offsets_from_the_prompt_start_and_usage_on_a_last_empty_chunk(dialect_backend):
    upstream = dialect_backend("openai")
    upstream.script(dialect="openai", tokens=TOKENS, alternatives=5, prompt_tokens=4)
    _, _, events = run(upstream_form(logprobs="5"))
    assert upstream.requests[-1].json["logprobs"] == 5
    assert [t["text"] for t in final(events).tokens] == TOKENS
    assert all(len(entry[2]) <= 5 for entry in tooltip_data(events))
    stats = summary(events)
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (4, 5)

    upstream.script(dialect="openai", status=429, headers={"Retry-After": "30"})
    _, _, events = run(upstream_form())
    assert "try again in 30 s" in events[-2].data


def test_llamacpp_content_shape_with_bytes_rebuilds_split_characters(dialect_backend):
    upstream = dialect_backend("llamacpp")
    upstream.script(dialect="llamacpp", tokens=["s = '", b"\xe4\xbd", b"\xa0", "'"])
    _, _, events = run(upstream_form())
    texts = [t["text"] for t in final(events).tokens]
    assert "".join(texts) == "s = '你'"
    assert "\ufffd" not in "".join(e.data for e in events)
    assert summary(events)["completion_tokens"] == 4

    upstream.script(dialect="llamacpp", status=400, error_message="Unsupported param: echo")
    _, _, events = run(upstream_form())
    assert "Unsupported param: echo" in events[-2].data


def test_ollama_sends_no_probabilities_and_says_so(dialect_backend):
    upstream = dialect_backend("ollama")
    upstream.script(dialect="ollama", tokens=TOKENS, prompt_tokens=6)
    _, _, events = run(upstream_form())
    assert "logprobs" not in upstream.requests[-1].json
    assert "sent no token probabilities" in events[-2].data
    assert not final(events).tokens
    stats = summary(events)
    # The all-zero usage on each chunk is ignored; the last `choices: []` chunk counts.
    assert (stats["prompt_tokens"], stats["completion_tokens"]) == (6, 5)

    upstream.script(dialect="ollama", status=404, error_message='model "x" not found')
    _, _, events = run(upstream_form())
    assert "not available" in events[-2].data


def test_tgi_eos_token_finish_no_logprobs_and_its_error_shape(dialect_backend):
    upstream = dialect_backend("tgi")
    upstream.script(dialect="tgi", tokens=TOKENS)
    _, _, events = run(upstream_form())
    assert "sent no token probabilities" in events[-2].data
    stats = summary(events)
    assert stats["finish_reason"] == "stop"  # TGI's raw "eos_token"
    assert stats["prompt_tokens"] is None  # TGI streams no usage: said, not guessed
    assert "not reported" in events[-2].data

    upstream.script(dialect="tgi", status=422, error_message="Input validation error: top_p")
    _, _, events = run(upstream_form())
    assert "Input validation error: top_p" in events[-2].data
