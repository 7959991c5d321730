"""The offline model's OpenAI-compatible endpoints, `/v1/models` and `/v1/completions`.

Requests go through Django's AsyncClient (the views are async and stream under ASGI); the
model is a small one trained once per session.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from django.test import AsyncClient

from playground import api, offline
from playground.completions import CompletionRequest
from playground.offline import training

pytestmark = pytest.mark.urls("tests.offline_urls")

PROMPT = "def read_config(path):\n    with open(path) as f:\n        "


@pytest.fixture(scope="session")
def small_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("offline-api") / "small-model.bin"
    training.build_model(path, corpus_chars=300_000)
    return path


@pytest.fixture(autouse=True)
def small_model(settings, small_model_path: Path) -> None:
    settings.OFFLINE_MODEL_PATH = small_model_path


class Reply:
    """What a test needs of a response, read to the end inside the event loop."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self) -> list[str]:
        """The `data:` payloads of a server-sent-events body, in order."""
        text = self.body.decode()
        assert text.endswith("\n\n")
        events = text[:-2].split("\n\n")
        assert all(event.startswith("data: ") for event in events)
        return [event.removeprefix("data: ") for event in events]


def call(method: str, path: str, body: Any = None, *, raw: str | None = None) -> Reply:
    async def go() -> Reply:
        client = AsyncClient()
        if method == "GET":
            response = await client.get(path)
        else:
            data = raw if raw is not None else json.dumps(body)
            response = await client.generic(method, path, data, content_type="application/json")
        if response.streaming:
            content = b"".join([part async for part in response.streaming_content])
        else:
            content = response.content
        return Reply(response.status_code, dict(response.headers), content)

    return asyncio.run(go())


def completions(**body: Any) -> Reply:
    return call("POST", "/v1/completions", {"model": offline.MODEL_ID, "prompt": PROMPT, **body})


def stream_chunks(**body: Any) -> tuple[list[dict], Reply]:
    reply = completions(stream=True, **body)
    assert reply.status == 200
    *data, done = reply.events()
    assert done == "[DONE]"
    return [json.loads(d) for d in data], reply


# --- /v1/models ---------------------------------------------------------------------------


def test_models_lists_the_offline_model() -> None:
    reply = call("GET", "/v1/models")
    assert reply.status == 200
    body = reply.json()
    assert body["object"] == "list"
    [model] = body["data"]
    assert model["id"] == "playground-offline"
    assert model["object"] == "model"
    assert model["owned_by"] == "playground"
    assert model["max_model_len"] == 4096
    assert isinstance(model["created"], int)


def test_wrong_methods_are_refused() -> None:
    reply = call("POST", "/v1/models", {})
    assert reply.status == 405
    assert reply.json()["error"]["type"] == "invalid_request_error"
    assert call("GET", "/v1/completions").status == 405


# --- /v1/completions, whole ---------------------------------------------------------------


def test_completion_shape() -> None:
    reply = completions(max_tokens=12, seed=1)
    assert reply.status == 200
    body = reply.json()
    assert body["id"].startswith("cmpl-")
    assert body["object"] == "text_completion"
    assert body["model"] == "playground-offline"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert isinstance(choice["text"], str)
    assert choice["text"]
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "length"
    usage = body["usage"]
    assert usage["completion_tokens"] == 12
    assert usage["prompt_tokens"] == offline.load_model().count_tokens(PROMPT)
    assert usage["total_tokens"] == usage["prompt_tokens"] + 12


def test_default_max_tokens_is_16() -> None:
    assert completions(seed=1).json()["usage"]["completion_tokens"] == 16


def test_completion_logprobs_shape() -> None:
    body = completions(max_tokens=20, seed=2, logprobs=3, temperature=1.0).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    tokens = logprobs["tokens"]
    assert len(tokens) == 20
    assert "".join(tokens) == choice["text"]
    assert len(logprobs["token_logprobs"]) == 20
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    offsets = logprobs["text_offset"]
    assert offsets[0] == 0
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    for token, lp, top in zip(
        tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert 3 <= len(top) <= 4  # the three most likely, plus the chosen one if lower
        assert top[token] == lp
        values = list(top.values())[:3]
        assert values == sorted(values, reverse=True)


def test_logprobs_zero_gives_only_the_chosen_token() -> None:
    logprobs = completions(max_tokens=5, seed=2, logprobs=0).json()["choices"][0]["logprobs"]
    assert [list(top) for top in logprobs["top_logprobs"]] == [[t] for t in logprobs["tokens"]]


def test_seed_reproduces_and_sampling_parameters_apply() -> None:
    params = {
        "max_tokens": 30,
        "seed": 42,
        "temperature": 0.9,
        "top_p": 0.95,
        "frequency_penalty": 0.3,
        "presence_penalty": 0.2,
    }
    first = completions(**params).json()["choices"][0]["text"]
    assert completions(**params).json()["choices"][0]["text"] == first
    # The API is a thin layer: the same parameters give the same text as the model itself.
    direct = offline.complete(
        CompletionRequest(model=offline.MODEL_ID, prompt=PROMPT, logprobs=0, **params)
    )
    assert first == direct.text


def test_stop_sequences() -> None:
    body = completions(max_tokens=200, seed=5, stop=["\n"]).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "stop"
    assert "\n" not in choice["text"]
    body = completions(max_tokens=200, seed=5, stop="\n").json()
    assert body["choices"][0]["text"] == choice["text"]


# --- /v1/completions, streamed ------------------------------------------------------------


def test_stream_shape_and_done() -> None:
    chunks, reply = stream_chunks(max_tokens=40, seed=3)
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.headers["Cache-Control"] == "no-cache"
    *content, final = chunks
    assert content
    assert len({c["id"] for c in chunks}) == 1
    for chunk in content:
        assert chunk["object"] == "text_completion"
        assert chunk["model"] == "playground-offline"
        [choice] = chunk["choices"]
        assert choice["text"]
        assert choice["finish_reason"] is None
        assert choice["logprobs"] is None
        assert "usage" not in chunk
    assert final["choices"] == [
        {"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}
    ]
    whole = completions(max_tokens=40, seed=3).json()["choices"][0]["text"]
    assert "".join(c["choices"][0]["text"] for c in content) == whole


def test_stream_logprobs_cover_each_chunk() -> None:
    chunks, _ = stream_chunks(max_tokens=40, seed=3, logprobs=2)
    offset = 0
    for chunk in chunks[:-1]:
        choice = chunk["choices"][0]
        logprobs = choice["logprobs"]
        assert "".join(logprobs["tokens"]) == choice["text"]
        assert logprobs["text_offset"][0] == offset  # counted from the completion's start
        assert len(logprobs["top_logprobs"]) == len(logprobs["tokens"])
        offset += len(choice["text"])


def test_stream_include_usage() -> None:
    chunks, _ = stream_chunks(max_tokens=25, seed=3, stream_options={"include_usage": True})
    *content, usage_chunk = chunks
    assert all(chunk["usage"] is None for chunk in content)
    assert content[-1]["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 25
    assert usage_chunk["usage"]["total_tokens"] == usage_chunk["usage"]["prompt_tokens"] + 25


def test_stream_stop_reason() -> None:
    chunks, _ = stream_chunks(max_tokens=200, seed=5, stop=["\n"])
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "\n" not in "".join(c["choices"][0]["text"] for c in chunks)


# --- Validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"prompt": "x"}, "model"),
        ({"model": 3, "prompt": "x"}, "model"),
        ({"model": "playground-offline"}, "prompt"),
        ({"model": "playground-offline", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "playground-offline", "prompt": "x" * 100_001}, "prompt"),
        ({"model": "playground-offline", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ({"model": "playground-offline", "prompt": "x", "max_tokens": 1025}, "max_tokens"),
        ({"model": "playground-offline", "prompt": "x", "max_tokens": True}, "max_tokens"),
        ({"model": "playground-offline", "prompt": "x", "max_tokens": "9"}, "max_tokens"),
        ({"model": "playground-offline", "prompt": "x", "temperature": "hot"}, "temperature"),
        ({"model": "playground-offline", "prompt": "x", "temperature": 2.5}, "temperature"),
        ({"model": "playground-offline", "prompt": "x", "top_p": 0}, "top_p"),
        ({"model": "playground-offline", "prompt": "x", "top_p": 1.5}, "top_p"),
        (
            {"model": "playground-offline", "prompt": "x", "frequency_penalty": -3},
            "frequency_penalty",
        ),
        (
            {"model": "playground-offline", "prompt": "x", "presence_penalty": 2.1},
            "presence_penalty",
        ),
        ({"model": "playground-offline", "prompt": "x", "seed": 1.5}, "seed"),
        ({"model": "playground-offline", "prompt": "x", "logprobs": 6}, "logprobs"),
        ({"model": "playground-offline", "prompt": "x", "logprobs": -1}, "logprobs"),
        ({"model": "playground-offline", "prompt": "x", "stop": ["a"] * 5}, "stop"),
        ({"model": "playground-offline", "prompt": "x", "stop": [""]}, "stop"),
        ({"model": "playground-offline", "prompt": "x", "stop": [1]}, "stop"),
        ({"model": "playground-offline", "prompt": "x", "stream": "yes"}, "stream"),
        (
            {"model": "playground-offline", "prompt": "x", "stream_options": {}},
            "stream_options",
        ),
        (
            {
                "model": "playground-offline",
                "prompt": "x",
                "stream": True,
                "stream_options": {"include_usage": "yes"},
            },
            "stream_options",
        ),
        ({"model": "playground-offline", "prompt": "x", "n": 2}, "n"),
        ({"model": "playground-offline", "prompt": "x", "echo": True}, "echo"),
        ({"model": "playground-offline", "prompt": "x", "temperatur": 1}, "temperatur"),
    ],
)
def test_invalid_requests_get_400(body: dict, param: str) -> None:
    reply = call("POST", "/v1/completions", body)
    assert reply.status == 400, reply.body
    assert reply.json() == {
        "error": {
            "message": reply.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    }
    assert reply.json()["error"]["message"]


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"prompt"', '{"temperature": NaN}', ""])
def test_unparseable_bodies_get_400(raw: str) -> None:
    reply = call("POST", "/v1/completions", raw=raw)
    assert reply.status == 400
    assert reply.json()["error"]["type"] == "invalid_request_error"


def test_unknown_model_gets_404() -> None:
    reply = call("POST", "/v1/completions", {"model": "gpt-17", "prompt": "x"})
    assert reply.status == 404
    error = reply.json()["error"]
    assert error["type"] == "not_found_error"
    assert error["param"] == "model"
    assert "gpt-17" in error["message"]


def test_accepted_neutral_parameters() -> None:
    reply = completions(
        max_tokens=3, n=1, best_of=1, echo=False, suffix=None, logit_bias={}, user="me", seed=None
    )
    assert reply.status == 200


def test_limits_are_the_advertised_ones() -> None:
    assert api.MAX_TOKENS_LIMIT == 1024
    assert api.MAX_PROMPT_CHARS == 100_000
    reply = completions(max_tokens=1024, seed=1, temperature=0.0)
    assert reply.json()["usage"]["completion_tokens"] == 1024
