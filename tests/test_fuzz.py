"""Hypothesis fuzzing of the generate endpoint: arbitrary field names and values never give a
500, and never an upstream request with an unknown key or an out-of-range value."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from sse import post_stream
from test_views import FORM

from playground.forms import MAX_STOP_LENGTH, MAX_STOP_SEQUENCES, SEED_MAX

ALLOWED_KEYS = {
    "model", "prompt", "max_tokens", "temperature", "top_p", "frequency_penalty",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "logprobs",
}  # fmt: skip
BASE = {**FORM, "backend": "completions", "max_tokens": "16"}

scalars = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "nan",
            "NaN",
            "inf",
            "-inf",
            "Infinity",
            "1e309",
            "",
            " ",
            "\t\n",
            "0x10",
            "1_000",
            "٣",
            "1e-400",
            "--1",
            "[]",
            "{}",
            "null",
            "true",
        ]
    ),  # fmt: skip
    st.text(max_size=50),
)
values = st.one_of(scalars, st.lists(scalars, max_size=6))
field_names = st.one_of(
    st.sampled_from(
        sorted(BASE)
        + [
            "stop",
            "seed_random",
            "n",
            "extra_body",
            "tools",
            "guided_json",
            "model",
            "stream",
            "n_discard",
            "api_key",
            "base_url",
            "logit_bias",
            "echo",
            "best_of",
        ]
    ),  # fmt: skip
    st.text(min_size=1, max_size=20),
)
changes = st.dictionaries(field_names, values, max_size=6)


def clean(value: str) -> str:
    # A browser cannot send lone surrogates (it posts U+FFFD); NUL is posted as is.
    return value.encode("utf-8", "replace").decode("utf-8")


def check_upstream_request(body: dict) -> None:
    assert set(body) <= ALLOWED_KEYS, set(body) - ALLOWED_KEYS
    assert body["stream"] is True
    assert 1 <= body["max_tokens"] <= 2048
    assert isinstance(body["prompt"], str)
    assert body["prompt"].strip()
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1),
                            ("frequency_penalty", -2, 2), ("presence_penalty", -2, 2)):  # fmt: skip
        value = body[name]
        assert isinstance(value, int | float)
        assert math.isfinite(value)
        assert low <= value <= high
    if "seed" in body:
        assert 0 <= body["seed"] <= SEED_MAX
    assert 0 <= body.get("logprobs", 1) <= 5
    stops = body.get("stop") or []
    assert len(stops) <= MAX_STOP_SEQUENCES
    assert all(len(s) <= MAX_STOP_LENGTH for s in stops)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=changes)
@example(changes={"n": "1000000", "max_tokens": "-1"})
@example(changes={"max_tokens": str(10**12)})
@example(changes={"temperature": "nan"})
@example(changes={"temperature": "inf", "top_p": "-inf"})
@example(changes={"logprobs": "100", "n_discard": "-5"})
@example(changes={"prompt": ""})
@example(changes={"prompt": "   \n\t"})
@example(changes={"extra_body": '{"x": 1}', "tools": "[]", "guided_json": "{}"})
@example(changes={"backend": "http://127.0.0.1:1/v1"})
@example(changes={"stop": ["a", "b", "c", "d", "e"]})
@example(changes={"seed": str(2**63), "seed_random": ""})
def test_generate_never_fails_and_never_forwards_what_it_did_not_validate(
    completions_backend, changes
):
    upstream = completions_backend
    upstream.requests.clear()
    form = dict(BASE)
    for key, value in changes.items():
        form[clean(key)] = [clean(v) for v in value] if isinstance(value, list) else clean(value)
    status, _, _ = post_stream("/generate", form)
    # 400: an unknown backend or model id; 422: a field to fix; neither sends anything.
    assert status in {200, 400, 422}, status
    completions = [r for r in upstream.requests if r.path == "/v1/completions"]
    if status in {400, 422}:
        assert completions == []
    else:
        assert len(completions) <= 1
        for request in completions:
            check_upstream_request(request.json)
