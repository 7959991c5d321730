"""The floor: the least a relay written in Python does per stream, measured beside the app.

`python -m bench.floor --port N --upstream-port M` serves `POST /generate` the way the load
generator calls the app, and does only what no relay can skip: it opens the upstream stream,
reads it at the app's pace (`streaming.cadence` for the streams it has open: a pause after each
small read, so several tokens come per read), parses each chunk's JSON (orjson) for its text,
and writes the escaped text as SSE events coalesced at the same cadence, then the `done` event.
No Django, no form, no limits, no token objects, no highlighting, no saving: a lower bound, not
a product. Raw asyncio on uvloop, its own process, like the app (one worker).

What it costs per 1,000 tokens, and its time to first token with N streams at once, is where
the floor is on this machine for sections 1 and 2 (docs/PERFORMANCE.md). `events_httpx`,
`events_features` and `events_product` are the same relay for bench/django_floor.py: reading
through the app's httpx client, also doing the product's per-token work with the app's own code
(`ProductTexts`), and also saving each run as a row and sending its highlighted completion
(`SavedProductTexts`); `events_lean` is the last with the leanest reader of the tokens
(`LeanSavedTexts`), run by hand with `python -m bench.lean_floor` (docs/PERFORMANCE.md, the
tenth round), not by `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from urllib.parse import parse_qs

import django
import orjson

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "playground.settings")
django.setup()

# The app's cadence and its own escaping and framing, so the comparison is like for like.
from bench.upstream import read_body  # noqa: E402
from playground.backends import Backend  # noqa: E402
from playground.completions import (  # noqa: E402
    CompletionRequest,
    LogprobStatus,
    SSEParser,
    Token,
    TokenAssembler,
    _delta,
    _parse_chunk,
)
from playground.history import saver, storable, storable_tokens, tokens_to_json  # noqa: E402
from playground.models import Run, RunStatus, TokensEncoder  # noqa: E402
from playground.rendering import RenderedCompletion, render_completion, render_plain  # noqa: E402
from playground.streaming import cadence, sse_message  # noqa: E402

HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\nconnection: close\r\n\r\n"
)


# What the app's chunk parser is told about the stream it reads (used only in its errors).
BACKEND = Backend(id="floor", label="floor", kind="openai", model="default")
REQUEST = CompletionRequest(model="default", prompt="", max_tokens=4096)


def event(text: str) -> bytes:
    return sse_message(f"<span>{render_plain(text)}</span>")


def upstream_request(form: dict[str, list[str]], port: int) -> bytes:
    def value(name: str, default: str = "") -> str:
        return form.get(name, [default])[0]

    body = json.dumps(
        {
            "model": "default",
            "prompt": value("prompt"),
            "max_tokens": int(value("max_tokens", "16")),
            "temperature": float(value("temperature", "0.2")),
            "top_p": float(value("top_p", "1")),
            "logprobs": int(value("logprobs", "0")),
            "stream": True,
            "seed": int(value("seed", "0")),
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


def events(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """The response body: the upstream stream for `form`, relayed as coalesced SSE events."""
    return _relayed(_socket_body(form, port))


def events_httpx(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """`events`, reading the upstream through the app's httpx client (`completions.get_client`:
    its pool and socket backend) instead of a raw socket: what the brief's fixed HTTP client
    adds to the floor. The same request body, pace, parse and events."""
    return _relayed(_httpx_body(form, port))


def events_product(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """`events_features`, also saving each run and sending its highlighted completion
    (`SavedProductTexts`): the product's least work per run on the brief's stack."""
    return _relayed(_httpx_body(form, port), SavedProductTexts(form.get("prompt", [""])[0]))


def events_lean(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """`events_product` with the leanest reader of the tokens (`LeanSavedTexts`): what the
    per-run floor would be if the read path built nothing per token."""
    return _relayed(_httpx_body(form, port), LeanSavedTexts(form.get("prompt", [""])[0]))


def events_features(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """`events_httpx` doing, with the app's own code, the per-token work the product needs
    (`ProductTexts`): what that work costs under load, beside the same stack without it."""
    return _relayed(_httpx_body(form, port), ProductTexts(form.get("prompt", [""])[0]))


async def _socket_body(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """The upstream response's body off a raw socket: per read, the whole chunks it completed
    (the upstream sends an SSE message per chunk, so no message is split across them)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        await loop.sock_sendall(sock, upstream_request(form, port))
        buffer = b""
        head = True
        while True:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                data = await loop.sock_recv(sock, 65536)
            if not data:
                return
            buffer += data
            if head:
                if b"\r\n\r\n" not in buffer:
                    continue
                buffer = buffer.split(b"\r\n\r\n", 1)[1]
                head = False
            pieces = []
            while (eol := buffer.find(b"\r\n")) >= 0:
                size = int(buffer[:eol], 16)
                if size == 0:
                    break
                end = eol + 2 + size
                if len(buffer) < end + 2:
                    break
                pieces.append(buffer[eol + 2 : end])
                buffer = buffer[end + 2 :]
            if pieces:
                yield b"".join(pieces)
    finally:
        sock.close()


async def _httpx_body(form: dict[str, list[str]], port: int) -> AsyncIterator[bytes]:
    """The same body, read through the app's httpx client."""
    from playground.completions import get_client

    body = upstream_request(form, port).split(b"\r\n\r\n", 1)[1]
    async with get_client().stream(
        "POST",
        f"http://127.0.0.1:{port}/v1/completions",
        content=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    ) as response:
        async for data in response.aiter_bytes():
            yield data


class Texts:
    """Each upstream chunk's text, as the body's bytes arrive: its JSON parsed (orjson), nothing
    else kept."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, data: bytes) -> list[str]:
        texts = []
        for chunk in self._chunks(data):
            choices = chunk.get("choices")
            if choices and choices[0].get("text"):
                texts.append(choices[0]["text"])
        return texts

    def _chunks(self, data: bytes) -> list[dict]:
        """The JSON of each SSE message `data` completes, parsed; `[DONE]` left out."""
        *frames, self._buffer = (self._buffer + data).split(b"\n\n")
        return [orjson.loads(frame[6:]) for frame in frames if frame[6:] != b"[DONE]"]

    async def end(self) -> bytes | None:
        """The work after the last chunk, and the message it sends, if any: none."""
        return None


class ProductTexts(Texts):
    """The same texts read by the app's own read path (`completions.SSEParser`, the chunk's
    JSON, `TokenAssembler`'s tokens with their alternatives), keeping the run's tokens; at the
    end, in a worker thread as the app does, the work every run's tokens get: the highlighted
    render (`render_completion`) and the JSON they are saved as. No form, limits, run record,
    templates or database."""

    def __init__(self, prompt: str) -> None:
        self._prompt = prompt
        self._parser = SSEParser()
        self._assembler = TokenAssembler()
        self._tokens: list = []
        self._text: list[str] = []

    def feed(self, data: bytes) -> list[str]:
        texts = []
        for message in self._parser.feed(data):
            if message == "[DONE]":
                continue
            delta = _delta(_parse_chunk(message, BACKEND, REQUEST), self._assembler)
            self._tokens += delta.tokens
            if delta.text:
                texts.append(delta.text)
        self._text += texts
        return texts

    async def end(self) -> bytes | None:
        await asyncio.to_thread(self._finish)
        return None

    def _finish(self) -> None:
        self._render()
        TokensEncoder().encode(storable_tokens(tokens_to_json(self._tokens)))

    def _render(self) -> RenderedCompletion:
        return render_completion(
            prompt=self._prompt,
            tokens=self._tokens,
            text="".join(self._text),
            logprobs=LogprobStatus.REAL,
        )


class SavedProductTexts(ProductTexts):
    """`ProductTexts`, and the least a run needs beyond that for the product to keep it and show
    it: the run saved as a row (`playground.models.Run`, through the app's saver: one thread,
    saves batched in a transaction) and the highlighted completion with its tooltip data sent as
    the stream's last message. No form, limits, owner, templates (no overview, stats, status or
    history item), summary or `done` data beyond the floor's."""

    async def end(self) -> bytes | None:
        rendered = await asyncio.to_thread(self._render)
        await saver.run(self._save)
        return sse_message(
            f'<pre class="code"><code>{rendered.html}</code></pre>'
            f'<script type="application/json">{rendered.data_json}</script>'
        )

    def _save(self) -> None:
        text = "".join(self._text)
        Run.objects.create(
            owner_key="bench-floor",
            prompt=storable(self._prompt),
            backend=BACKEND.id,
            model=REQUEST.model,
            text=storable(text),
            tokens=storable_tokens(tokens_to_json(self._tokens)),
            logprobs=LogprobStatus.REAL.value,
            completion_tokens=len(self._tokens),
            finish_reason="length",
            status=RunStatus.COMPLETE,
        )


class LeanSavedTexts(SavedProductTexts):
    """`SavedProductTexts` with the least a reader can do per chunk and still keep its token:
    the SSE framing split as `Texts` does, the JSON parsed (orjson) and the chunk's text,
    logprob and alternatives (the parsed dict's items) kept as they are. The `Token`s the
    render and the save take are made at the run's end, in the worker thread. It reads only
    the bench upstream's shape (one legacy-logprobs token per chunk), checks nothing and knows
    no other server: a lower bound for the app's read path, not a replacement for it."""

    def __init__(self, prompt: str) -> None:
        super().__init__(prompt)
        self._buffer = b""
        self._raw: list[tuple[str, float, dict]] = []

    def feed(self, data: bytes) -> list[str]:
        texts = []
        for chunk in self._chunks(data):
            choices = chunk.get("choices")
            if not choices:
                continue  # the usage chunk
            choice = choices[0]
            logprobs = choice.get("logprobs")
            if logprobs:
                self._raw.append(
                    (choice["text"], logprobs["token_logprobs"][0], logprobs["top_logprobs"][0])
                )
            if choice["text"]:
                texts.append(choice["text"])
        self._text += texts
        return texts

    def _render(self) -> RenderedCompletion:
        self._tokens = [
            Token(text=text, logprob=logprob, alternatives=tuple(top.items()))
            for text, logprob, top in self._raw
        ]
        return super()._render()


_open = 0  # streams this process relays now: the app's cadence depends on it


async def _relayed(reads: AsyncIterator[bytes], texts: Texts | None = None) -> AsyncIterator[bytes]:
    """The upstream's SSE body, read by `reads` at the app's pace (a pause after each small
    read once text flows), parsed for each chunk's text by `texts` and written as coalesced
    events."""
    global _open
    texts = texts or Texts()
    pending: list[str] = []
    last_write = 0.0
    seen_text = False
    _open += 1  # counted while it reads the upstream, as the app's pump counts its streams
    try:
        async with contextlib.aclosing(reads):
            async for data in reads:
                pending += texts.feed(data)
                now = time.perf_counter()
                if pending and (not seen_text or now - last_write >= cadence(_open)):
                    yield event("".join(pending))
                    pending.clear()
                    last_write = now
                    seen_text = True
                if seen_text and len(data) < 16384:
                    await asyncio.sleep(cadence(_open))
    finally:
        _open -= 1
    if pending:
        yield event("".join(pending))
    final = await texts.end()
    if final is not None:
        yield final
    yield b'event: done\ndata: {"status":"complete"}\n\n'


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
    try:
        form = parse_qs((await read_body(reader)).decode())
        writer.write(HEAD)
        async for chunk in events(form, port):
            writer.write(chunk)
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(port: int, upstream_port: int) -> None:
    server = await asyncio.start_server(
        lambda r, w: relay(r, w, upstream_port), "127.0.0.1", port, backlog=2048
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    args = parser.parse_args()
    import uvloop

    try:
        uvloop.run(serve(args.port, args.upstream_port))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
