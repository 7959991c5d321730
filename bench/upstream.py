"""A lean loopback upstream for the benchmarks: OpenAI-legacy (vLLM-style) SSE at a fixed pace.

Run it as its own process (`python -m bench.upstream --port N`) so its CPU is not the app's. It
answers every `POST /v1/completions` with `max_tokens` tokens, one SSE frame each, `delay_ms`
apart (the server's `--delay-ms`, or `delay_ms=<x>` anywhere in the prompt), each with its logprob
and `logprobs` alternatives, then a usage chunk and `[DONE]`, then closes the connection. Each
SSE message is its own HTTP chunk (`Transfer-Encoding: chunked`), as vLLM (uvicorn), NIM,
llama.cpp and TGI send them: a body ended by closing the connection would reach the relay's
HTTP client as one piece per read, and hide what a piece per token costs it. Token
texts are Python-like and include the request's seed, so every concurrent stream is distinct and
the client can check that it got exactly its own text (`expected_text`).

It is a raw asyncio server rather than an ASGI app so that the baseline costs as little as
possible: each frame is pre-encoded JSON written straight to the socket.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from json.encoder import encode_basestring
from pathlib import Path

_DELAY = re.compile(r"delay_ms=([0-9.]+)")


def token_texts(seed: int, count: int) -> list[str]:
    """The tokens the upstream sends for `seed`: a Python function whose names carry the seed."""
    tokens = ["\n", "def", f" f{seed}", "():", "\n"]
    i = 0
    while len(tokens) < count:
        tokens += ["    ", f"v{seed}_{i + 1}", " =", f" call{i % 7}", "(", f"v{seed}_{i}", ","]
        tokens += [f" {i}", ")", "\n"]
        i += 1
    return tokens[:count]


def real_code_tokens(count: int) -> list[str]:
    """`count` tokens of real Python: the standard library's difflib from its first `def`, cut
    into the offline model's tokens (asked for with `corpus=difflib` in the prompt)."""
    import difflib

    from playground.offline.tokenizer import tokenize

    source = Path(difflib.__file__).read_text()
    return tokenize(source[source.index("\ndef ") + 1 :])[:count]


def expected_text(seed: int, count: int) -> str:
    return "".join(token_texts(seed, count))


def frame(index: int, token: str, offset: int, alternatives: int) -> bytes:
    """One chunk as vLLM streams it, formatted directly: json.dumps of the nested dicts would
    make the upstream, not the relay, the bottleneck at 500 streams."""
    logprob = -((index * 37) % 100) / 40
    quoted = encode_basestring(token)
    top = [f"{quoted}:{logprob!r}"]
    top += [f'"alt{k}":{logprob - 0.5 * k!r}' for k in range(1, alternatives)]
    return (
        'data: {"id":"cmpl-bench","object":"text_completion","created":1760000000,'
        f'"model":"bench","choices":[{{"index":0,"text":{quoted},"logprobs":{{"tokens":[{quoted}],'
        f'"token_logprobs":[{logprob!r}],"top_logprobs":[{{{",".join(top)}}}],'
        f'"text_offset":[{offset}]}},"finish_reason":null}}]}}\n\n'
    ).encode()


def tail(count: int) -> bytes:
    last = {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1760000000,
        "model": "bench",
        "choices": [{"index": 0, "text": "", "logprobs": None, "finish_reason": "length"}],
    }
    usage = {
        "id": "cmpl-bench",
        "object": "text_completion",
        "created": 1760000000,
        "model": "bench",
        "choices": [],
        "usage": {"prompt_tokens": 7, "completion_tokens": count, "total_tokens": 7 + count},
    }
    messages = [b"data: " + json.dumps(c, separators=(",", ":")).encode() for c in (last, usage)]
    return b"".join(chunk(message + b"\n\n") for message in [*messages, b"data: [DONE]"])


HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    """One HTTP/1.1 chunk."""
    return b"%x\r\n%s\r\n" % (len(data), data)


async def read_body(reader: asyncio.StreamReader) -> bytes:
    """The body of one HTTP/1.1 request with a Content-Length (all the bench's clients send)."""
    return await read_rest(await reader.readuntil(b"\r\n\r\n"), reader)


async def read_rest(head: bytes, reader: asyncio.StreamReader) -> bytes:
    """The body after a request's `head` (its request line and headers)."""
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return await reader.readexactly(length) if length else b""


def tokenized(body: dict) -> bytes:
    """A vLLM `POST /tokenize` answer (the page asks for the prompt's token count): a token per
    word, which is all the bench needs of it."""
    count = len(str(body.get("prompt", "")).split())
    answer = json.dumps({"count": count, "tokens": list(range(count)), "max_model_len": 16384})
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n{answer}".encode()
    )


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        body = json.loads(await read_rest(head, reader) or b"{}")
        if head.split(b" ", 2)[1].endswith(b"/tokenize"):
            writer.write(tokenized(body))
            await writer.drain()
            return
        count = int(body.get("max_tokens", 16))
        seed = int(body.get("seed") or 0)
        alternatives = int(body.get("logprobs") or 0)
        found = _DELAY.search(body.get("prompt", ""))
        pace = float(found.group(1)) / 1000 if found else delay
        writer.write(HEAD)
        loop = asyncio.get_running_loop()
        start = loop.time()
        offset = 0
        prompt = body.get("prompt", "")
        texts = real_code_tokens(count) if "corpus=difflib" in prompt else token_texts(seed, count)
        for index, token in enumerate(texts):
            if pace > 0:
                # Absolute schedule: a late wake-up does not push every later token back.
                wait = start + (index + 1) * pace - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            writer.write(chunk(frame(index, token, offset, alternatives)))
            offset += len(token)
            if pace > 0 or index % 64 == 63:
                await writer.drain()
        writer.write(tail(count) + b"0\r\n\r\n")
        await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(port: int, delay: float) -> None:
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, delay), "127.0.0.1", port, backlog=2048
    )
    print(f"ready {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=5.0)
    args = parser.parse_args()
    import uvloop  # uvicorn[standard] brings it

    try:
        uvloop.run(serve(args.port, args.delay_ms / 1000))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
