"""Hostile text from the model, in its alternatives and in the prompt stays inert text.

Each payload of tests/hostile.py goes through the app as it would in production: from the
loopback upstream as a completion token and as an alternative token (with the prompt the same
payload, since the prompt is highlighted together with the completion), and as a prompt sent
back with a validation error. The browser half is in tests/test_browser.py.
"""

from __future__ import annotations

import json

import pytest
import tooltips
from django.test import Client
from hostile import PAYLOADS, assert_inert, visible
from sse import post_stream
from test_views import FORM

NAMES = list(PAYLOADS)


def as_typed(payload: str) -> str:
    """What a browser can post: it sends U+FFFD for a lone surrogate; Django refuses NUL."""
    return visible(payload)


def generate(payload: str) -> list:
    form = {**FORM, "backend": "completions", "max_tokens": "16", "prompt": as_typed(payload)}
    status, _, events = post_stream("/generate", form)
    assert status == 200
    return events


def raw_stream(tokens: list[str], alternatives: list[dict[str, float]]) -> bytes:
    """An OpenAI-style stream written by hand: JSON escapes can carry lone surrogates, which
    the byte-level fake upstream cannot."""
    frames = []
    for i, token in enumerate(tokens):
        logprobs = {
            "tokens": [token],
            "token_logprobs": [alternatives[i].get(token, -0.5)],
            "top_logprobs": [alternatives[i]],
            "text_offset": [0],
        }
        choice = {"text": token, "index": 0, "logprobs": logprobs, "finish_reason": None}
        frames.append({"choices": [choice]})
    frames.append(
        {"choices": [{"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}]}
    )
    body = "".join(f"data: {json.dumps(frame)}\n\n" for frame in frames) + "data: [DONE]\n\n"
    return body.encode()


@pytest.mark.parametrize("name", NAMES)
def test_a_hostile_completion_token_and_alternative_stay_text(completions_backend, name):
    payload = PAYLOADS[name]
    tokens = ["x = ", payload, "\n"]
    alternatives = [{"x = ": -0.1, payload: -2.0}, {payload: -0.2, "y": -1.0}, {"\n": -0.3}]
    if visible(payload) != payload:
        completions_backend.script(
            status=200,
            body=raw_stream(tokens, alternatives),
            headers={"Content-Type": "text/event-stream"},
        )
    else:
        completions_backend.script(dialect="openai", tokens=tokens, alternatives=alternatives)
    events = generate(payload)
    fragments = [e.data for e in events if not e.event]
    for html in fragments:
        assert_inert(html)
    end = assert_inert(fragments[-1])
    # The completion shows the payload as text, whole.
    assert visible("x = " + payload + "\n") in "".join(end.text)
    # The streamed text showed it too, before the final render.
    streamed = "".join("".join(assert_inert(html).text) for html in fragments[1:-1])
    assert visible(payload) in streamed
    # The alternatives travel as JSON inside <script type="application/json">, which must
    # still parse (no early </script>) and give the strings back.
    (html,) = [html for html in fragments if "run-data" in html]
    data = tooltips.entries(html)
    assert data[1][0] == visible(payload)
    assert visible(payload) in [alt for alt, _ in data[0][2]] + [alt for alt, _ in data[1][2]]
    assert json.loads(next(e.data for e in events if e.event == "done"))["status"] == "complete"


@pytest.mark.parametrize("name", NAMES)
def test_a_hostile_prompt_comes_back_as_text_in_the_textarea(name):
    payload = PAYLOADS[name]
    client = Client()
    baseline = client.post("/generate", {**FORM, "prompt": "harmless", "temperature": "9"})
    response = client.post("/generate", {**FORM, "prompt": as_typed(payload), "temperature": "9"})
    assert response.status_code == baseline.status_code == 422
    page = assert_inert(response.content.decode(), baseline=baseline.content.decode())
    # The textarea keeps the prompt (the browser drops one leading newline of a textarea).
    shown = "".join(page.textarea)
    assert shown.removeprefix("\n") in (visible(payload), visible(payload).removeprefix("\n"))


def test_the_offline_model_run_on_a_hostile_prompt_renders_inert():
    prompt = "\n".join(as_typed(p) for p in PAYLOADS.values() if len(p) < 1000)
    status, _, events = post_stream("/generate", {**FORM, "prompt": prompt})
    assert status == 200
    for event in events:
        if not event.event:
            assert_inert(event.data)


@pytest.mark.parametrize("name", ["nul", "lone-surrogate"])
def test_a_run_with_unstorable_characters_is_still_recorded(completions_backend, name):
    """NUL (refused by PostgreSQL) and lone surrogates (not UTF-8) are stored as U+FFFD."""
    from playground.models import Run

    payload = PAYLOADS[name]
    tokens = ["x = ", payload, "\n"]
    alternatives = [{"x = ": -0.1}, {payload: -0.2, "y": -1.0}, {"\n": -0.3}]
    completions_backend.script(
        status=200,
        body=raw_stream(tokens, alternatives),
        headers={"Content-Type": "text/event-stream"},
    )
    generate(payload)
    run = Run.objects.get()
    assert run.text == visible("x = " + payload + "\n")
    assert run.tokens[1][0] == visible(payload)
    assert [alt for alt, _ in run.tokens[1][2]][0] == visible(payload)


def test_nul_in_a_session_name_prompt_or_search_is_stored_and_searched_as_text():
    from playground.models import Session

    client = Client()
    response = client.post(
        "/sessions/save", {**FORM, "name": "a\x00b", "prompt": "p\x00q", "temperature": "\x00"}
    )
    assert response.status_code == 302
    session = Session.objects.get()
    assert (session.name, session.prompt) == ("a\ufffdb", "p\ufffdq")
    assert session.params["temperature"] == "\ufffd"
    assert client.get("/sessions/", {"q": "a\x00b"}).status_code == 200
    assert client.post("/draft", {**FORM, "prompt": "\x00"}).status_code == 204
