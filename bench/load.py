"""The load generator: N simultaneous streams over raw asyncio sockets, in its own process.

`python -m bench.load '<json spec>'` prints one JSON object: per stream the time to first token,
the total time and whether the text was exactly what the upstream sent for that stream's seed,
and the CPU this client process used. Raw sockets on uvloop keep the client cheap (httpx costs
several times more per chunk), and a separate process keeps its CPU off the app's and the
orchestrator's measurements.

Spec keys: mode ("relay": POST /generate on the app with HX-Request; "direct": POST
/v1/completions on the upstream), port, streams, tokens, delay_ms, seed, and for relay the
csrf token. Every stream gets its own seed (seed + i), so its tokens are distinct.
"""

from __future__ import annotations

import asyncio
import html
import json
import os
import sys
import time
from urllib.parse import urlencode

from bench.upstream import expected_text

RELAY_MARK = b"data: <span>"
DIRECT_MARK = b"data: {"


def prompt(delay_ms: float) -> str:
    return f"def fibonacci(n):\n    # delay_ms={delay_ms:g}\n"


def relay_request(spec: dict, seed: int) -> bytes:
    body = urlencode(
        {
            "backend": "completions",
            "prompt": prompt(spec["delay_ms"]),
            "temperature": "0.2",
            "top_p": "0.95",
            "frequency_penalty": "0",
            "presence_penalty": "0",
            "seed": str(seed),
            "max_tokens": str(spec["tokens"]),
            "logprobs": "5",
        }
    ).encode()
    head = (
        f"POST /generate HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nHX-Request: true\r\nAccept: text/event-stream\r\n"
        f"X-CSRFToken: {spec['csrf']}\r\nCookie: csrftoken={spec['csrf']}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def direct_request(spec: dict, seed: int) -> bytes:
    # What completions.build_payload sends for the same form.
    body = json.dumps(
        {
            "model": "default",
            "prompt": prompt(spec["delay_ms"]),
            "max_tokens": spec["tokens"],
            "temperature": 0.2,
            "top_p": 0.95,
            "frequency_penalty": 0.0,
            "presence_penalty": 0.0,
            "logprobs": 5,
            "stream": True,
            "seed": seed,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    head = (
        f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{spec['port']}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        "Accept: text/event-stream\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


async def one(spec: dict, seed: int, gate: asyncio.Event) -> dict:
    relay = spec["mode"] == "relay"
    request = relay_request(spec, seed) if relay else direct_request(spec, seed)
    mark = RELAY_MARK if relay else DIRECT_MARK
    await gate.wait()
    start = time.perf_counter()
    ttft = None
    data = bytearray()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", spec["port"])
        writer.write(request)
        while chunk := await reader.read(65536):
            if ttft is None:
                scan_from = max(0, len(data) - len(mark))
                data += chunk
                if data.find(mark, scan_from) >= 0:
                    ttft = time.perf_counter() - start
            else:
                data += chunk
        total = time.perf_counter() - start
        writer.close()
    except OSError as exc:
        return {"seed": seed, "error": f"{type(exc).__name__}: {exc}", "raw": b""}
    return {"seed": seed, "ttft": ttft, "total": total, "raw": bytes(data)}


def dechunk(body: bytes) -> bytes:
    out = bytearray()
    position = 0
    while True:
        end = body.index(b"\r\n", position)
        size = int(body[position:end].split(b";")[0], 16)
        if size == 0:
            return bytes(out)
        out += body[end + 2 : end + 2 + size]
        position = end + 2 + size + 2


def events(body: str) -> list[tuple[str | None, str]]:
    found = []
    for block in body.split("\n\n"):
        name, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            found.append((name, "\n".join(data)))
    return found


def check(spec: dict, result: dict) -> dict:
    """Replace the raw response by ok/error: is the text exactly this stream's own?"""
    raw = result.pop("raw")
    if "error" in result:
        result["ok"] = False
        return result
    head, _, body = raw.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    if b" 200 " not in status + b" ":
        result.update(ok=False, error=status.decode(errors="replace"))
        return result
    if b"transfer-encoding: chunked" in head.lower():
        body = dechunk(body)
    text_parts = []
    status_ok = True
    for name, data in events(body.decode()):
        if spec["mode"] == "relay":
            if name is None and data.startswith("<span>") and data.endswith("</span>"):
                text_parts.append(html.unescape(data[6:-7]))
            elif name == "done":
                status_ok = json.loads(data)["status"] == "complete"
        elif data.startswith("{"):
            choices = json.loads(data)["choices"]
            if choices:
                text_parts.append(choices[0]["text"])
    text = "".join(text_parts)
    expected = expected_text(result["seed"], spec["tokens"])
    result["ok"] = status_ok and text == expected and result["ttft"] is not None
    if not result["ok"]:
        result["error"] = "mixed or wrong text" if status_ok else "run failed"
    return result


async def run(spec: dict) -> list[dict]:
    gate = asyncio.Event()
    tasks = [asyncio.create_task(one(spec, spec["seed"] + i, gate)) for i in range(spec["streams"])]
    await asyncio.sleep(0)
    gate.set()
    return await asyncio.gather(*tasks)


def main() -> None:
    import uvloop

    spec = json.loads(sys.argv[1])
    cpu = os.times()
    started = time.perf_counter()
    results = uvloop.run(run(spec))
    wall = time.perf_counter() - started
    cpu_after = os.times()
    checked = [check(spec, r) for r in results]
    print(
        json.dumps(
            {
                "results": checked,
                "wall": wall,
                "client_cpu": (cpu_after.user + cpu_after.system) - (cpu.user + cpu.system),
            }
        )
    )


if __name__ == "__main__":
    main()
