"""A loopback fake upstream for integration tests: a real HTTP/1.1 server on 127.0.0.1.

It speaks the `/v1/completions` dialects of /work/shared/reference/protocol.md (hosted NIM,
OpenAI legacy, vLLM, llama.cpp, Ollama, TGI), serves `GET /v1/models`, and fails on cue.

It is a small raw asyncio server in a background thread rather than an ASGI app under uvicorn
because the tests need byte-level control over the wire: each SSE frame is its own TCP write and
HTTP chunk (so a UTF-8 character can be split across two writes), the connection can be reset
mid-body or left silent before the status line, and the server must notice the client hanging up.

    with running_upstream() as upstream:
        upstream.script(dialect="llamacpp", tokens=["def", " f"], fail="reset_mid_stream")
        ...  # point a backend at upstream.base_url
        assert upstream.requests[-1].json["stream"] is True
        assert upstream.requests[-1].disconnected.wait(5)

Each POST to `/v1/completions` consumes the next scripted response; with none left it answers
with `upstream.default`.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import json
import math
import socket
import ssl
import struct
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

DIALECTS = ("nim", "openai", "vllm", "llamacpp", "ollama", "tgi")
FAILURES = (
    "stall_before_first_byte",
    "stall_mid_stream",
    "reset_mid_stream",
    "close_before_response",
    "malformed_chunk",
    "split_multibyte",
    "error_event",
    "never_ends",
    "ends_early",
    "no_done",
    "holds_after_done",
)
DEFAULT_TOKENS = ("    return", " a", " +", " b", "\n")
CREATED = 1760000000
# Ollama puts this on every chunk under include_usage, the real counts on a last `choices: []`.
OLLAMA_ZERO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}


@dataclass
class Script:
    """One scripted answer to `POST /v1/completions`.

    tokens: the generated tokens; a `bytes` item is a raw byte piece (e.g. half of a UTF-8
        character), rendered the way each dialect does (U+FFFD for vLLM, `bytes:\\x..` for OpenAI,
        a truncated string plus `bytes` for llama.cpp).
    logprobs: the sampled token's logprob per token (default -0.1, -0.2, ...).
    alternatives: an int (how many top entries per token, the sampled one first) or an explicit
        list per token of `{token: logprob}` dicts, sent as given.
    fail: one of FAILURES; `fail_after` frames (tokens) are sent before a mid-stream failure.
    status/body/headers: a non-200 status answers with the dialect's error body (or `body`).
    chunk_delay: seconds between frames; stall: how long a stall lasts.
    """

    dialect: str = "vllm"
    tokens: Sequence[str | bytes] = DEFAULT_TOKENS
    logprobs: Sequence[float] | None = None
    alternatives: int | Sequence[Mapping[str, float]] = 2
    finish_reason: str = "stop"
    prompt_tokens: int = 7
    fail: str | None = None
    fail_after: int = 2
    status: int = 200
    body: bytes | str | Mapping[str, Any] | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    error_message: str = "Something went wrong in the fake upstream."
    chunk_delay: float = 0.0
    stall: float = 30.0
    newline: str = "\n"
    probs: bool = False  # llama.cpp `post_sampling_probs`: `prob`/`top_probs` instead

    def __post_init__(self) -> None:
        if self.dialect not in DIALECTS:
            raise ValueError(f"unknown dialect {self.dialect!r}")
        if self.fail is not None and self.fail not in FAILURES:
            raise ValueError(f"unknown failure {self.fail!r}")


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any
    # Set when the client closed the connection before the whole response was written.
    disconnected: threading.Event = field(default_factory=threading.Event)
    # Set when the server finished writing the response.
    answered: threading.Event = field(default_factory=threading.Event)


class Upstream:
    def __init__(self, scheme: str = "http") -> None:
        self.host = "127.0.0.1"
        self.port = 0
        self.scheme = scheme
        self.requests: list[ReceivedRequest] = []
        self.arrived = threading.Event()  # set when a request has been read
        self.default = Script()
        self.models = ["bigcode/starcoder2-7b"]
        self.connections = 0
        self._scripts: deque[Script] = deque()
        self._lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.port}/v1"

    def script(self, **kwargs: Any) -> Script:
        """Queue the answer to the next completion request (see `Script` for the knobs)."""
        script = Script(**kwargs)
        with self._lock:
            self._scripts.append(script)
        return script

    def _next_script(self) -> Script:
        with self._lock:
            return self._scripts.popleft() if self._scripts else self.default

    # --- connection handling ---------------------------------------------------------------

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                request = await self._read_request(reader)
                if request is None or not await self._respond(request, reader, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> ReceivedRequest | None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return None
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        method, path, _version = request_line.split(" ", 2)
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        body = await reader.readexactly(length) if length else b""
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        request = ReceivedRequest(method, path, headers, body, parsed)
        self.requests.append(request)
        self.arrived.set()
        return request

    async def _respond(
        self, request: ReceivedRequest, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection must not be reused."""
        if request.method == "GET" and request.path == "/v1/models":
            data = [
                {"id": m, "object": "model", "created": CREATED, "owned_by": "fake"}
                for m in self.models
            ]
            return await self._play(
                request, reader, writer, [_json_response(200, {"object": "list", "data": data})]
            )
        if request.method == "POST" and request.path == "/tokenize":
            return await self._play(request, reader, writer, [_tokenize_response(request.json)])
        if request.method != "POST" or request.path != "/v1/completions":
            body = {"error": {"message": "Not found", "type": "not_found_error", "code": 404}}
            return await self._play(request, reader, writer, [_json_response(404, body)])
        script = self._next_script()
        return await self._play(request, reader, writer, _actions(script, request.json or {}))

    async def _play(
        self,
        request: ReceivedRequest,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        actions: list[tuple[str, Any]],
    ) -> bool:
        # While answering, the client sends nothing (httpx does not pipeline): a read that
        # completes means it hung up.
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            for action, argument in actions:
                if hangup.done():
                    request.disconnected.set()
                    return False
                if action == "write":
                    writer.write(argument)
                    await writer.drain()
                elif action == "sleep":
                    await asyncio.wait({hangup}, timeout=argument)
                elif action == "pings":
                    while not hangup.done():
                        writer.write(_http_chunk(b": ping\n\n"))
                        await writer.drain()
                        await asyncio.wait({hangup}, timeout=argument)
                elif action == "close":
                    return False
                elif action == "reset":
                    # SO_LINGER 0: close with a TCP RST instead of an orderly FIN.
                    sock = writer.get_extra_info("socket")
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    writer.transport.abort()
                    return False
            request.answered.set()
            return True
        except ConnectionError:
            request.disconnected.set()
            return False
        finally:
            if hangup.done() and not hangup.cancelled() and hangup.result() == b"":
                request.disconnected.set()
            hangup.cancel()
            # Let the cancelled read unregister itself before the next request is read.
            with contextlib.suppress(asyncio.CancelledError):
                await hangup


@contextlib.contextmanager
def running_upstream(tls: ssl.SSLContext | None = None) -> Iterator[Upstream]:
    """Run a fake upstream on a free loopback port for the duration of the block (over TLS with
    `tls`, a server-side context)."""
    upstream = Upstream("https" if tls else "http")
    loop = asyncio.new_event_loop()
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(upstream.handle, "127.0.0.1", 0, ssl=tls)
        )
        upstream.port = server.sockets[0].getsockname()[1]
        started.set()
        loop.run_forever()
        server.close()
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=serve, name="fake-upstream", daemon=True)
    thread.start()
    if not started.wait(10):
        raise RuntimeError("the fake upstream did not start")
    try:
        yield upstream
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def closed_port_url() -> str:
    """A loopback base URL nothing listens on (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


# --- wire format ------------------------------------------------------------------------------


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {HTTPStatus(status).phrase}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _json_response(
    status: int,
    payload: Any,
    content_type: str = "application/json",
    extra: Mapping[str, str] | None = None,
) -> tuple[str, bytes]:
    body = json.dumps(payload, ensure_ascii=False).encode()
    headers = {"Content-Type": content_type, "Content-Length": str(len(body)), **(extra or {})}
    return ("write", _head(status, headers) + body)


@dataclass
class _Step:
    """One generated token as each dialect needs it."""

    index: int
    data: bytes
    text: str  # the characters this token completes (what a server puts in `text`)
    logprob: float
    top: dict[str, float]
    top_bytes: dict[str, bytes]


def _steps(script: Script) -> list[_Step]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    steps = []
    for i, token in enumerate(script.tokens):
        data = token if isinstance(token, bytes) else token.encode()
        logprob = script.logprobs[i] if script.logprobs else round(-0.1 * (i + 1), 4)
        name = _vllm_name(data)
        if isinstance(script.alternatives, int):
            top = {name: logprob}
            for k in range(script.alternatives - 1):
                top[f"<alt{i}.{k}>"] = round(logprob - 1.5 - k, 4)
        else:
            top = dict(script.alternatives[i]) if i < len(script.alternatives) else {}
        top_bytes = {key: (data if key == name else key.encode()) for key in top}
        steps.append(_Step(i, data, decoder.decode(data), logprob, top, top_bytes))
    return steps


def _vllm_name(data: bytes) -> str:
    # A byte-level BPE token decoded on its own: a partial character becomes U+FFFD.
    return data.decode("utf-8", errors="replace")


def _openai_name(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return "bytes:" + "".join(f"\\x{b:02x}" for b in data)


def _llamacpp_name(data: bytes) -> str:
    # llama.cpp validates token text as UTF-8 and truncates an incomplete character.
    return data.decode("utf-8", errors="ignore")


def _legacy_logprobs(steps: list[_Step], offset: int, name: Any = _vllm_name) -> dict[str, Any]:
    offsets, running = [], offset
    for step in steps:
        offsets.append(running)
        running += len(step.text)
    return {
        "text_offset": offsets,
        "token_logprobs": [step.logprob for step in steps],
        "tokens": [name(step.data) for step in steps],
        "top_logprobs": [
            {name(step.top_bytes[key]): lp for key, lp in step.top.items()} for step in steps
        ],
    }


def _content_logprobs(steps: list[_Step], probs: bool) -> dict[str, Any]:
    value_key, top_key = ("prob", "top_probs") if probs else ("logprob", "top_logprobs")

    def value(logprob: float) -> float:
        return math.exp(logprob) if probs else logprob

    return {
        "content": [
            {
                "id": 1000 + step.index,
                "token": _llamacpp_name(step.data),
                "bytes": list(step.data),
                value_key: value(step.logprob),
                top_key: [
                    {
                        "id": 2000 + k,
                        "token": _llamacpp_name(step.top_bytes[key]),
                        "bytes": list(step.top_bytes[key]),
                        value_key: value(lp),
                    }
                    for k, (key, lp) in enumerate(step.top.items())
                ],
            }
            for step in steps
        ]
    }


def _usage(script: Script, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": script.prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": script.prompt_tokens + completion_tokens,
    }


def _chunk(script: Script, model: str, choices: list[dict[str, Any]], **extra: Any) -> dict:
    common: dict[str, Any] = {"object": "text_completion", "created": CREATED, "model": model}
    if script.dialect == "tgi":
        common.update(id="", system_fingerprint="3.3.7-native")
    elif script.dialect == "ollama":
        common.update(id="cmpl-123", system_fingerprint="fp_ollama")
    else:
        common["id"] = "cmpl-fake"
    return {**common, "choices": choices, **extra}


def _stream_events(script: Script, request: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The JSON chunks of a stream, before any failure is applied (protocol.md §1.5-§6)."""
    steps = _steps(script)
    model = request.get("model", "model")
    wants_logprobs = bool(request.get("logprobs"))
    wants_usage = bool((request.get("stream_options") or {}).get("include_usage"))
    last = len(steps) - 1
    finish = script.finish_reason
    events: list[dict[str, Any]] = []
    dialect = script.dialect
    prompt_length = len(request.get("prompt", ""))

    for step in steps:
        final = step.index == last
        if dialect == "vllm":
            # text_offset runs from the start of the completion (§3.3); finish on the last token.
            offset = sum(len(s.text) for s in steps[: step.index])
            choice = {
                "index": 0,
                "text": step.text,
                "logprobs": _legacy_logprobs([step], offset) if wants_logprobs else None,
                "finish_reason": finish if final else None,
                "stop_reason": None,
            }
            events.append(_chunk(script, model, [choice]))
        elif dialect == "openai":
            # text_offset from the start of the prompt (§2); `usage: null` on every chunk.
            offset = prompt_length + sum(len(s.text) for s in steps[: step.index])
            logprobs = _legacy_logprobs([step], offset, _openai_name) if wants_logprobs else None
            choice = {"text": step.text, "index": 0, "logprobs": logprobs, "finish_reason": None}
            events.append(_chunk(script, model, [choice], usage=None))
        elif dialect == "nim":
            # Placeholder zero logprobs and usage growing chunk by chunk (§1.4, §1.5).
            placeholder = {
                "text_offset": [],
                "token_logprobs": [0.0],
                "tokens": [],
                "top_logprobs": [],
            }
            choice = {"index": 0, "text": step.text, "finish_reason": None, "logprobs": placeholder}
            events.append(_chunk(script, model, [choice], usage=_usage(script, step.index + 1)))
        elif dialect == "llamacpp":
            logprobs = _content_logprobs([step], script.probs) if wants_logprobs else None
            choice = {"text": step.text, "index": 0, "logprobs": logprobs, "finish_reason": None}
            events.append(_chunk(script, model, [choice]))
        elif dialect == "ollama":
            choice = {"text": step.text, "index": 0, "finish_reason": None}
            extra = {"usage": OLLAMA_ZERO_USAGE} if wants_usage else {}
            events.append(_chunk(script, model, [choice], **extra))
        elif dialect == "tgi":
            tgi_finish = {"stop": "eos_token"}.get(finish, finish) if final else ""
            choice = {"index": 0, "text": step.text, "logprobs": None, "finish_reason": tgi_finish}
            events.append(_chunk(script, model, [choice]))

    # The closing chunks: a finish_reason with no text, then usage on `choices: []`.
    count = len(steps)
    if dialect == "openai":
        events.append(
            _chunk(
                script,
                model,
                [{"text": "", "index": 0, "logprobs": None, "finish_reason": finish}],
                usage=None,
            )
        )
        if wants_usage:
            events.append(_chunk(script, model, [], usage=_usage(script, count)))
    elif dialect == "vllm" and wants_usage:
        events.append(_chunk(script, model, [], usage=_usage(script, count)))
    elif dialect == "nim":
        choice = {"index": 0, "text": "", "finish_reason": finish, "logprobs": None}
        events.append(_chunk(script, model, [choice], usage=_usage(script, count)))
    elif dialect == "llamacpp":
        # Usage rides on the final chunk here (its exact layout is [I] in §4.1).
        extra = (
            {"usage": _usage(script, count), "timings": {"predicted_n": count}}
            if wants_usage
            else {}
        )
        events.append(
            _chunk(script, model, [{"text": "", "index": 0, "finish_reason": finish}], **extra)
        )
    elif dialect == "ollama":
        extra = {"usage": OLLAMA_ZERO_USAGE} if wants_usage else {}
        events.append(
            _chunk(script, model, [{"text": "", "index": 0, "finish_reason": finish}], **extra)
        )
        if wants_usage:
            events.append(_chunk(script, model, [], usage=_usage(script, count)))
    return events


def _completion_body(script: Script, request: Mapping[str, Any]) -> dict[str, Any]:
    """A non-streamed answer (protocol.md §1.3, §2, §3.2, §4.1, §5, §6)."""
    steps = _steps(script)
    model = request.get("model", "model")
    text = "".join(step.text for step in steps)
    wants_logprobs = bool(request.get("logprobs"))
    dialect = script.dialect
    logprobs: Any = None
    if wants_logprobs and dialect == "vllm":
        logprobs = _legacy_logprobs(steps, 0)
    elif wants_logprobs and dialect == "openai":
        logprobs = _legacy_logprobs(steps, len(request.get("prompt", "")), _openai_name)
    elif wants_logprobs and dialect == "llamacpp":
        logprobs = _content_logprobs(steps, script.probs)
    elif dialect == "nim":
        # NVIDIA's model-card example: a chat-style list of bare zero logprobs (§1.4).
        logprobs = {"content": [{"logprob": 0} for _ in steps]}
    choice: dict[str, Any] = {"index": 0, "text": text, "finish_reason": script.finish_reason}
    if dialect != "ollama":
        choice["logprobs"] = logprobs
    return _chunk(script, model, [choice], usage=_usage(script, len(steps)))


def _error_payload(script: Script, status: int) -> tuple[Any, str]:
    """The dialect's error body and content type (protocol.md §0 last row)."""
    message = script.error_message
    phrase = HTTPStatus(status).phrase
    if script.dialect == "nim":
        problem = {"type": "about:blank", "status": status, "title": phrase, "detail": message}
        return problem, "application/problem+json"
    if script.dialect == "tgi":
        return {"error": message, "error_type": "validation" if status == 422 else "generation"}, (
            "application/json"
        )
    if script.dialect == "vllm":
        error = {
            "message": message,
            "type": phrase.replace(" ", "") + "Error",
            "param": None,
            "code": status,
        }
    elif script.dialect == "llamacpp":
        error = {"code": status, "message": message, "type": "invalid_request_error"}
    else:
        error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return {"error": error}, "application/json"


def _error_event(script: Script) -> dict[str, Any]:
    if script.dialect == "nim":
        return {
            "error": {"object": "error", "message": script.error_message, "type": "internal_error"}
        }
    if script.dialect == "tgi":
        return {"error": script.error_message, "error_type": "generation"}
    return {
        "error": {
            "message": script.error_message,
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }


def _split_frame(frame: bytes) -> list[bytes]:
    """Two pieces, cut inside the first multibyte character (or in the middle)."""
    for i, byte in enumerate(frame):
        if byte >= 0x80:
            return [frame[: i + 1], frame[i + 1 :]]
    middle = len(frame) // 2
    return [frame[:middle], frame[middle:]]


def _actions(script: Script, request: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """What to do on the wire for one completion request."""
    fail = script.fail
    if fail == "close_before_response":
        return [("close", None)]
    before: list[tuple[str, Any]] = []
    if fail == "stall_before_first_byte":
        before = [("sleep", script.stall)]
    if script.status != 200 or script.body is not None:
        return [*before, _error_action(script)]
    if not request.get("stream"):
        return [*before, *_completion_actions(script, request)]

    nl = script.newline
    events = _stream_events(script, request)
    if fail == "ends_early":
        events = [
            {**e, "choices": [{**c, "finish_reason": None} for c in e["choices"]]}
            for e in events
            if e["choices"]
        ]
    frames = [f"data: {json.dumps(e, ensure_ascii=False)}{nl}{nl}".encode() for e in events]
    cut = min(script.fail_after, len(frames))
    if fail == "malformed_chunk":
        frames.insert(cut, f'data: {{"choices": [{{"text": "x"{nl}{nl}'.encode())
    elif fail == "error_event":
        frames = [*frames[:cut], f"data: {json.dumps(_error_event(script))}{nl}{nl}".encode()]
    if fail not in ("ends_early", "no_done"):
        frames.append(f"data: [DONE]{nl}{nl}".encode())

    headers = {
        "Content-Type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "Transfer-Encoding": "chunked",
        **script.headers,
    }
    actions: list[tuple[str, Any]] = [*before, ("write", _head(200, headers))]
    for i, frame in enumerate(frames):
        if i == cut and fail == "stall_mid_stream":
            return [*actions, ("sleep", script.stall), ("close", None)]
        if i == cut and fail == "reset_mid_stream":
            return [*actions, ("reset", None)]
        if i == cut and fail == "never_ends":
            return [*actions, ("pings", script.chunk_delay or 0.05)]
        if i and script.chunk_delay:
            actions.append(("sleep", script.chunk_delay))
        if fail == "split_multibyte":
            first, second = _split_frame(frame)
            # A pause between the writes so the halves arrive as separate reads.
            actions += [
                ("write", _http_chunk(first)),
                ("sleep", 0.01),
                ("write", _http_chunk(second)),
            ]
        else:
            actions.append(("write", _http_chunk(frame)))
    if fail == "holds_after_done":
        # `[DONE]` sent, but the body's end (and the connection) held back for `stall` s.
        actions.append(("sleep", script.stall))
    actions.append(("write", b"0\r\n\r\n"))
    return actions


def _tokenize_response(body: Any) -> tuple[str, bytes]:
    """`POST /tokenize` in the shape of whoever asked (protocol.md §3, §4.3, §6): one token per
    whitespace-separated word, so tests can predict the count."""
    body = body if isinstance(body, dict) else {}
    if "content" in body:  # llama.cpp
        return _json_response(200, {"tokens": list(range(len(body["content"].split())))})
    if "inputs" in body:  # TGI
        words = body["inputs"].split()
        return _json_response(200, [{"id": i, "text": w} for i, w in enumerate(words)])
    words = str(body.get("prompt", "")).split()  # vLLM / self-hosted NIM
    return _json_response(
        200, {"count": len(words), "max_model_len": 16384, "tokens": list(range(len(words)))}
    )


def _error_action(script: Script) -> tuple[str, Any]:
    headers = dict(script.headers)
    if script.body is None:
        payload, content_type = _error_payload(script, script.status)
        return _json_response(script.status, payload, content_type, headers)
    if isinstance(script.body, Mapping):
        return _json_response(script.status, script.body, "application/json", headers)
    body = script.body.encode() if isinstance(script.body, str) else script.body
    headers = {
        "Content-Type": "text/html; charset=utf-8",
        "Content-Length": str(len(body)),
        **headers,
    }
    return ("write", _head(script.status, headers) + body)


def _completion_actions(script: Script, request: Mapping[str, Any]) -> list[tuple[str, Any]]:
    action, data = _json_response(200, _completion_body(script, request), extra=script.headers)
    head, _, body = data.partition(b"\r\n\r\n")
    head += b"\r\n\r\n"
    if script.fail == "reset_mid_stream":
        return [("write", head + body[: len(body) // 2]), ("reset", None)]
    if script.fail == "malformed_chunk":
        broken = body[: len(body) // 2]
        head = head.replace(
            f"Content-Length: {len(body)}".encode(), f"Content-Length: {len(broken)}".encode()
        )
        return [("write", head + broken)]
    if script.fail == "stall_mid_stream":
        return [("write", head + body[: len(body) // 2]), ("sleep", script.stall), ("close", None)]
    return [(action, data)]
