"""The OpenAI-compatible endpoints of the built-in offline model: `/v1/models`, `/v1/completions`.

They let curl, the OpenAI SDKs and any other completions client use the offline model like a
vLLM server (the legacy completions protocol, streaming or not, with logprobs). Only the
offline model is served here: nothing in this module calls an upstream. Requests are validated
strictly and rejected with OpenAI's error shape
`{"error": {"message", "type", "param", "code"}}`.

Both views are exempt from CSRF: they are an API for non-browser clients, authenticated by
nothing and changing no state, so a forged cross-site request could gain nothing from them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Any

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from playground.completions import CompletionRequest, Token
from playground.offline import MODEL_ID, complete, load_model, stream_completion

logger = logging.getLogger(__name__)

MAX_TOKENS_LIMIT = 1024
MAX_PROMPT_CHARS = settings.PLAYGROUND_MAX_PROMPT_CHARS
MAX_MODEL_LEN = 4096
MAX_LOGPROBS = 5
MAX_STOP_SEQUENCES = 4
DEFAULT_MAX_TOKENS = 16
_SEED_RANGE = (-(2**63), 2**64 - 1)

# Parameters of the OpenAI protocol that are accepted only with their neutral value (one
# choice, no echo, no suffix, no logit bias) or, for `user`, ignored.
_PASSIVE = frozenset({"n", "best_of", "echo", "suffix", "logit_bias", "user"})
_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "max_tokens",
        "temperature",
        "top_p",
        "frequency_penalty",
        "presence_penalty",
        "seed",
        "stop",
        "stream",
        "stream_options",
        "logprobs",
    }
    | _PASSIVE
)


class _Invalid(Exception):
    """A request the API refuses; becomes an OpenAI-shaped error response."""

    def __init__(
        self,
        message: str,
        param: str | None = None,
        *,
        status: int = 400,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.kind = kind

    def response(self) -> JsonResponse:
        return _error(self.message, param=self.param, status=self.status, kind=self.kind)


def _error(
    message: str,
    *,
    param: str | None = None,
    status: int = 400,
    kind: str = "invalid_request_error",
) -> JsonResponse:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return JsonResponse(body, status=status)


def _method_not_allowed(allowed: list[str]) -> JsonResponse:
    response = _error(f"Method not allowed: use {' or '.join(allowed)}.", status=405)
    response["Allow"] = ", ".join(allowed)
    return response


@csrf_exempt
async def v1_models(request: HttpRequest) -> HttpResponse:
    """GET /v1/models: the one model this server has."""
    if request.method not in ("GET", "HEAD"):
        return _method_not_allowed(["GET"])
    model = {
        "id": MODEL_ID,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "playground",
        "max_model_len": MAX_MODEL_LEN,
    }
    return JsonResponse({"object": "list", "data": [model]})


@csrf_exempt
async def v1_completions(request: HttpRequest) -> HttpResponse:
    """POST /v1/completions: a completion of the offline model, streamed (SSE) or whole."""
    if request.method != "POST":
        return _method_not_allowed(["POST"])
    try:
        body = _parse_body(request)
        completion_request, stream, include_usage, logprobs = _parse_request(body)
    except _Invalid as exc:
        return exc.response()
    try:
        # Loaded (or, on a cold start, built) before any response starts, so a failure is a
        # proper error response rather than a stream that breaks off.
        await asyncio.to_thread(load_model)
    except (OSError, RuntimeError):
        logger.exception("The offline model could not be built or loaded")
        return _error(
            "The offline model is not available right now.", status=503, kind="server_error"
        )
    completion_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if stream:
        response = StreamingHttpResponse(
            _events(completion_request, completion_id, created, logprobs, include_usage),
            content_type="text/event-stream",
        )
        response["Cache-Control"] = "no-cache"
        # Proxies such as nginx would otherwise buffer the stream and defeat its purpose.
        response["X-Accel-Buffering"] = "no"
        return response
    completion = await asyncio.to_thread(complete, completion_request)
    usage = completion.usage
    prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
    completion_tokens = (usage.completion_tokens or 0) if usage else 0
    return JsonResponse(
        {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": MODEL_ID,
            "choices": [
                {
                    "index": 0,
                    "text": completion.text,
                    "logprobs": (
                        None if logprobs is None else _logprobs(completion.tokens, logprobs, 0)
                    ),
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        },
        json_dumps_params={"ensure_ascii": False},
    )


async def _events(
    completion_request: CompletionRequest,
    completion_id: str,
    created: int,
    logprobs: int | None,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """The server-sent events of a streamed completion, `data: [DONE]` last."""

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
        payload = {
            "id": completion_id,
            "object": "text_completion",
            "created": created,
            "model": MODEL_ID,
            "choices": choices,
            **extra,
        }
        if include_usage and "usage" not in extra:
            payload["usage"] = None  # as OpenAI does: every chunk has the key
        data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        return f"data: {data}\n\n".encode()

    offset = 0
    finish_reason = None
    usage = None
    # aclosing: when the client goes away this generator is closed, and closing the model's
    # stream with it is what stops generation at once rather than at garbage collection.
    async with aclosing(stream_completion(completion_request)) as deltas:
        async for delta in deltas:
            if delta.text:
                yield chunk(
                    [
                        {
                            "index": 0,
                            "text": delta.text,
                            "logprobs": (
                                None
                                if logprobs is None
                                else _logprobs(delta.tokens, logprobs, offset)
                            ),
                            "finish_reason": None,
                        }
                    ]
                )
                offset += len(delta.text)
            finish_reason = delta.finish_reason or finish_reason
            usage = delta.usage or usage
    yield chunk([{"index": 0, "text": "", "logprobs": None, "finish_reason": finish_reason}])
    if include_usage:
        prompt_tokens = (usage.prompt_tokens or 0) if usage else 0
        completion_tokens = (usage.completion_tokens or 0) if usage else 0
        yield chunk(
            [],
            usage={
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        )
    yield b"data: [DONE]\n\n"


def _logprobs(tokens: tuple[Token, ...], top: int, offset: int) -> dict[str, list[Any]]:
    """OpenAI's legacy logprobs object; `text_offset` counts from the completion's start.

    Like vLLM, each `top_logprobs` entry holds the `top` most likely tokens and always the
    chosen one too, even when it ranked lower.
    """
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token.text)
    top_logprobs = []
    for token in tokens:
        entry = dict(token.alternatives[:top])
        entry.setdefault(token.text, token.logprob)
        top_logprobs.append(entry)
    return {
        "tokens": [token.text for token in tokens],
        "token_logprobs": [token.logprob for token in tokens],
        "top_logprobs": top_logprobs,
        "text_offset": offsets,
    }


# --- Validation -------------------------------------------------------------------------


def _parse_body(request: HttpRequest) -> dict[str, Any]:
    try:
        raw = request.body
    except RequestDataTooBig:
        raise _Invalid("The request body is too large.", status=413) from None

    def reject_constant(name: str) -> float:
        raise ValueError(f"{name} is not valid JSON")

    try:
        body = json.loads(raw, parse_constant=reject_constant)
    except (ValueError, UnicodeDecodeError):
        raise _Invalid(
            "We could not parse the JSON body of your request. The body must be a JSON object."
        ) from None
    if not isinstance(body, dict):
        raise _Invalid("The request body must be a JSON object.")
    return body


def _parse_request(
    body: dict[str, Any],
) -> tuple[CompletionRequest, bool, bool, int | None]:
    """(request, stream, include_usage, logprobs or None) from a JSON body, or `_Invalid`."""
    for name in body:
        if name not in _FIELDS:
            raise _Invalid(f"Unrecognized request argument supplied: {name}", name)

    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("you must provide a model parameter", "model")
    if model != MODEL_ID:
        raise _Invalid(
            f"The model `{model}` does not exist.", "model", status=404, kind="not_found_error"
        )

    prompt = body.get("prompt")
    if not isinstance(prompt, str):
        raise _Invalid(
            "prompt must be a string (batches and token ids are not supported)", "prompt"
        )
    if len(prompt) > MAX_PROMPT_CHARS:
        raise _Invalid(f"prompt must be at most {MAX_PROMPT_CHARS} characters", "prompt")

    max_tokens = _integer(body, "max_tokens", DEFAULT_MAX_TOKENS, 1, MAX_TOKENS_LIMIT)
    temperature = _number(body, "temperature", 1.0, 0.0, 2.0)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, exclusive_low=True)
    frequency_penalty = _number(body, "frequency_penalty", 0.0, -2.0, 2.0)
    presence_penalty = _number(body, "presence_penalty", 0.0, -2.0, 2.0)
    seed = body.get("seed")
    if seed is not None:
        seed = _integer(body, "seed", 0, *_SEED_RANGE)
    logprobs = body.get("logprobs")
    if logprobs is not None:
        logprobs = _integer(body, "logprobs", 0, 0, MAX_LOGPROBS)

    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise _Invalid("stop must be a non-empty string or a list of non-empty strings", "stop")
    if len(stop) > MAX_STOP_SEQUENCES:
        raise _Invalid(f"stop may hold at most {MAX_STOP_SEQUENCES} sequences", "stop")

    stream = body.get("stream")
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise _Invalid("stream must be a boolean", "stream")
    include_usage = False
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise _Invalid("stream_options is only allowed when stream is true", "stream_options")
        if not isinstance(options, dict) or set(options) - {"include_usage"}:
            raise _Invalid(
                'stream_options must be an object with only "include_usage"', "stream_options"
            )
        include_usage = options.get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise _Invalid("stream_options.include_usage must be a boolean", "stream_options")

    _check_passive(body)
    request = CompletionRequest(
        model=MODEL_ID,
        prompt=prompt,
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        frequency_penalty=frequency_penalty,
        presence_penalty=presence_penalty,
        seed=seed,
        stop=tuple(stop),
        logprobs=logprobs or 0,
    )
    return request, stream, include_usage, logprobs


def _check_passive(body: dict[str, Any]) -> None:
    if body.get("n") not in (None, 1) or isinstance(body.get("n"), bool):
        raise _Invalid("only n=1 is supported", "n")
    if body.get("best_of") not in (None, 1) or isinstance(body.get("best_of"), bool):
        raise _Invalid("only best_of=1 is supported", "best_of")
    if body.get("echo") not in (None, False):
        raise _Invalid("echo is not supported", "echo")
    if body.get("suffix") not in (None, ""):
        raise _Invalid("suffix is not supported", "suffix")
    if body.get("logit_bias") not in (None, {}):
        raise _Invalid("logit_bias is not supported", "logit_bias")
    if not isinstance(body.get("user", ""), str):
        raise _Invalid("user must be a string", "user")


def _integer(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    # bool is an int subclass, and JSON true is not a number; 16.0 is accepted as 16.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{name} must be an integer", name)
    if not low <= value <= high:
        raise _Invalid(f"{name} must be between {low} and {high}", name)
    return value


def _number(
    body: dict[str, Any],
    name: str,
    default: float,
    low: float,
    high: float,
    *,
    exclusive_low: bool = False,
) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Invalid(f"{name} must be a number", name)
    if value > high or value < low or (exclusive_low and value == low):
        low_bracket = "(" if exclusive_low else "["
        raise _Invalid(f"{name} must be in {low_bracket}{low}, {high}]", name)
    return float(value)
