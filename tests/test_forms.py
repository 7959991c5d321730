"""Validation and the parameter allow-list (playground/forms.py)."""

import pytest
from django.http import QueryDict

from playground.completions import CompletionRequest
from playground.forms import GenerateForm, decode_stop, encode_stop

VALID = {
    "backend": "offline",
    "prompt": "def add(a, b):\n",
    "temperature": "0.7",
    "top_p": "0.9",
    "frequency_penalty": "0",
    "presence_penalty": "0.5",
    "seed": "7",
    "max_tokens": "64",
    "logprobs": "3",
}


def form_for(**changes) -> GenerateForm:
    data = QueryDict(mutable=True)
    for key, value in {**VALID, **changes}.items():
        if value is None:
            continue
        if isinstance(value, list):
            data.setlist(key, value)
        else:
            data[key] = value
    return GenerateForm(data)


def test_valid_form_becomes_a_request_with_exactly_the_validated_values():
    form = form_for(stop=["\\n\\n", "", "class "])
    assert form.is_valid(), form.errors
    assert form.to_request() == CompletionRequest(
        model="playground-offline",
        prompt="def add(a, b):\n",
        max_tokens=64,
        temperature=0.7,
        top_p=0.9,
        frequency_penalty=0.0,
        presence_penalty=0.5,
        seed=7,
        stop=("\n\n", "class "),
        logprobs=3,
    )


def test_random_seed_sends_no_seed():
    form = form_for(seed_random="on")
    assert form.is_valid(), form.errors
    assert form.to_request().seed is None


def test_prompt_whitespace_is_kept_exactly():
    form = form_for(prompt="  x = 1\n\n\t")
    assert form.is_valid(), form.errors
    assert form.to_request().prompt == "  x = 1\n\n\t"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", "2.01"),
        ("temperature", "-0.1"),
        ("temperature", "nan"),
        ("temperature", "inf"),
        ("top_p", "1.5"),
        ("frequency_penalty", "-2.5"),
        ("presence_penalty", "3"),
        ("max_tokens", "0"),
        ("max_tokens", "1025"),  # above the offline model's limit
        ("max_tokens", "99999999999999999999999"),
        ("logprobs", "6"),
        ("seed", "-1"),
        ("seed", "2147483648"),
        ("seed", "1.5"),
        ("backend", "http://169.254.169.254/v1"),
        ("backend", "nope"),
        ("prompt", ""),
        ("prompt", "   \n\t "),
    ],
)
def test_out_of_range_values_are_refused_with_a_message_beside_the_field(field, value):
    form = form_for(**{field: value})
    assert not form.is_valid()
    assert form.errors[field], form.errors


def test_missing_seed_without_random_is_an_error_on_the_seed_field():
    form = form_for(seed=None)
    assert not form.is_valid()
    assert "Random seed" in form.errors["seed"][0]


def test_more_than_four_stop_sequences_are_refused():
    form = form_for(stop=["a", "b", "c", "d", "e"])
    assert not form.is_valid()
    assert "at most 4" in form.errors["stop"][0]


def test_overlong_prompt_is_refused(settings):
    form = form_for(prompt="x" * (settings.PLAYGROUND_MAX_PROMPT_CHARS + 1))
    assert not form.is_valid()
    assert form.errors["prompt"]


def test_unknown_fields_never_reach_the_request():
    form = form_for(api_key="sk-evil", base_url="http://evil.example", logit_bias="{}")
    assert form.is_valid(), form.errors
    request = form.to_request()
    assert not hasattr(request, "api_key")
    assert set(request.__dataclass_fields__) == {
        "model", "prompt", "max_tokens", "temperature", "top_p", "frequency_penalty",
        "presence_penalty", "seed", "stop", "logprobs", "suffix",
    }  # fmt: skip


@pytest.mark.parametrize("text", ["\n", "\\n", "a\\tb", "\\\\n", "x\ny\tz\\"])
def test_stop_sequences_round_trip_through_their_one_line_form(text):
    assert decode_stop(encode_stop(text)) == text


def test_stop_escapes_mean_their_characters():
    assert decode_stop("\\n\\ndef ") == "\n\ndef "
    assert decode_stop("a\\qb") == "a\\qb"


def test_forms_share_their_fields_and_one_bound_form_leaves_another_untouched():
    """The fields are shared, not deep-copied per form (forms._SharedFields): rendering one form
    with errors and values must not leak into the next form's rendering."""
    bad = form_for(temperature="9", prompt="x <b>")
    assert not bad.is_valid()
    fresh = GenerateForm(initial={"temperature": 0.2})
    assert fresh.fields["temperature"] is bad.fields["temperature"]
    bad_html = str(bad["temperature"]) + str(bad["prompt"])
    fresh_html = str(fresh["temperature"]) + str(fresh["prompt"])
    assert 'value="9"' in bad_html
    assert "x &lt;b&gt;" in bad_html
    assert 'aria-invalid="true"' in bad_html
    assert 'value="9"' not in fresh_html
    assert "&lt;b&gt;" not in fresh_html
    assert "aria-invalid" not in fresh_html
    assert 'value="0.2"' in fresh_html
