"""What a reopened https connection costs the worker, by hand: `python -m bench.tls_pool`.

Not part of `make bench` (its upstream is plain HTTP on loopback, as the issue sets it, and it
has no room left under ten minutes): docs/PERFORMANCE.md, *Optimisations*. A TLS server on
loopback (a throwaway CA from trustme, in its own process, so only the client's CPU is counted)
answers small requests; the client sends bursts of BURST requests at once through the app's
upstream client (`completions.make_client`, every connection kept idle for the next run) and
through the same client keeping httpx's default of 20, and prints the client's CPU per request.
With 20 kept, each burst past 20 opens a new connection, a TLS handshake, per request.

    python -m bench.tls_pool [BURST] [BURSTS]      # default: bursts of 200, 10 of each
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from bench import procs

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _serve(port: int, cert_dir: Path) -> None:
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(cert_dir / "ca.pem"))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        await reader.readexactly(int(line.split(b":")[1]))
                writer.write(ANSWER)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, ssl=context)
    await server.serve_forever()


@contextlib.contextmanager
def tls_server() -> Iterator[tuple[int, Path]]:
    with tempfile.TemporaryDirectory() as tmp:
        server = procs._module("bench.tls_pool", "--serve", tmp)
        with server as (port, _process):
            yield port, Path(tmp) / "ca.pem"


async def _cpu_per_request(client: httpx.AsyncClient, url: str, burst: int, bursts: int) -> float:
    async def one_burst() -> None:
        responses = await asyncio.gather(*[client.post(url, content=b"{}") for _ in range(burst)])
        assert all(r.status_code == 200 for r in responses)

    await one_burst()  # the first burst opens its connections in both cases
    start = time.process_time()
    for _ in range(bursts):
        await one_burst()
    return (time.process_time() - start) / (burst * bursts)


async def _measure(port: int, ca: Path, burst: int, bursts: int) -> None:
    from django.conf import settings

    settings.configure()  # the app's modules are imported outside a Django project here
    from playground import completions, network

    url = f"https://127.0.0.1:{port}/v1/completions"
    verify = ssl.create_default_context(cafile=str(ca))
    timeout = httpx.Timeout(30.0)
    # The app's client, with the loopback CA: the pool limits `make_client` sets, on a
    # transport that trusts the throwaway CA, with the app's network backend.
    made = completions.make_client(max_connections=1000, timeout=timeout)
    limits = _limits(made)
    await made.aclose()
    app = httpx.AsyncClient(
        timeout=timeout, transport=httpx.AsyncHTTPTransport(verify=verify, limits=limits)
    )
    network.install(app._transport)
    default = httpx.AsyncClient(
        timeout=timeout,
        transport=httpx.AsyncHTTPTransport(
            verify=verify,
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=20),
        ),
    )
    network.install(default._transport)
    async with app, default:
        for _ in range(3):  # in turns, as the machine's speed drifts
            kept = await _cpu_per_request(app, url, burst, bursts)
            twenty = await _cpu_per_request(default, url, burst, bursts)
            print(
                f"bursts of {burst}: client CPU per request {kept * 1e3:.3f} ms with every "
                f"connection kept, {twenty * 1e3:.3f} ms with 20 kept "
                f"({(twenty - kept) * 1e3 * burst / (burst - 20):.2f} ms per reopened connection)",
                flush=True,
            )


def _limits(client: httpx.AsyncClient) -> httpx.Limits:
    """The limits `make_client` gave its pool."""
    pool = client._transport._pool
    return httpx.Limits(
        max_connections=pool._max_connections,
        max_keepalive_connections=pool._max_keepalive_connections,
        keepalive_expiry=pool._keepalive_expiry,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int)
    parser.add_argument("--serve")
    parser.add_argument("burst", nargs="?", type=int, default=200)
    parser.add_argument("bursts", nargs="?", type=int, default=10)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(_serve(args.port, Path(args.serve)))
        return
    with tls_server() as (port, ca):  # the CA is written before the port opens
        asyncio.run(_measure(port, ca, args.burst, args.bursts))


if __name__ == "__main__":
    sys.exit(main())
