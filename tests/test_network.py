"""The upstream client's socket backend (playground/network.py), over plain TCP and TLS, against
the loopback upstream: streams arrive whole, connections are reused, and failures come out as
the same errors users saw with httpx's default backend."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import types

import httpcore
import httpx
import pytest
import trustme
from upstream import _http_chunk, closed_port_url, running_upstream

from playground import completions, network
from playground.backends import Backend
from playground.completions import (
    CompletionRequest,
    ErrorKind,
    UpstreamError,
    make_client,
    stream_completion,
)

REQUEST = CompletionRequest(model="bigcode/starcoder2-7b", prompt="def f():", max_tokens=8)
TOKENS = ["\n", "    return", " 1", "\n"]


def backend(base_url: str) -> Backend:
    return Backend(
        id="net", label="Net", kind="openai", model="bigcode/starcoder2-7b", base_url=base_url
    )


async def run(client: httpx.AsyncClient, base_url: str) -> str:
    text = []
    async with contextlib.aclosing(stream_completion(client, backend(base_url), REQUEST)) as d:
        async for delta in d:
            text.append(delta.text)
    return "".join(text)


def pool_backend(client: httpx.AsyncClient):
    return client._transport._pool._network_backend


@pytest.fixture(scope="module")
def authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_upstream(authority):
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(context)
    with running_upstream(tls=context) as server:
        yield server


def trusting_client(authority: trustme.CA | None) -> httpx.AsyncClient:
    """What make_client builds, trusting our throwaway authority (or nothing of ours)."""
    context = ssl.create_default_context()
    if authority is not None:
        authority.configure_trust(context)
    client = httpx.AsyncClient(verify=context, timeout=5.0)
    assert network.install(client._transport)
    return client


def test_the_app_client_reads_through_the_socket_backend():
    async def go():
        async with make_client() as client:
            return pool_backend(client)

    assert isinstance(asyncio.run(go()), network.SocketBackend)


def test_a_mock_transport_is_left_alone():
    transport = httpx.MockTransport(lambda request: httpx.Response(200))
    assert network.install(transport) is False


def test_streams_in_pieces_over_plain_tcp(upstream):
    upstream.script(tokens=TOKENS, chunk_delay=0.01)
    upstream.script(tokens=TOKENS, newline="\r\n")

    async def go():
        async with make_client() as client:
            return [await run(client, upstream.base_url) for _ in range(2)]

    assert asyncio.run(go()) == ["".join(TOKENS)] * 2


def test_streams_over_tls_with_a_trusted_certificate(tls_upstream, authority):
    tls_upstream.script(tokens=TOKENS, chunk_delay=0.01)
    opened: list[network.TLSStream] = []
    real_init = network.TLSStream.__init__

    def recording(self, reader, writer):
        real_init(self, reader, writer)
        opened.append(self)

    async def go():
        async with trusting_client(authority) as client:
            return await run(client, tls_upstream.base_url)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(network.TLSStream, "__init__", recording)
        assert asyncio.run(go()) == "".join(TOKENS)
    assert len(opened) == 1
    assert tls_upstream.requests[0].path == "/v1/completions"


def test_an_untrusted_certificate_is_refused_as_unreachable(tls_upstream):
    async def go():
        async with trusting_client(None) as client:
            await run(client, tls_upstream.base_url)

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(go())
    assert raised.value.kind is ErrorKind.UNAVAILABLE
    assert "Could not reach the backend" in raised.value.message
    assert tls_upstream.requests == []  # nothing was sent over the unverified connection


def test_a_closed_port_is_unreachable():
    async def go():
        async with make_client() as client:
            await run(client, closed_port_url())

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(go())
    assert raised.value.kind is ErrorKind.UNAVAILABLE
    assert "Could not reach the backend" in raised.value.message


def test_a_silent_upstream_is_a_read_timeout_and_a_deaf_one_a_connect_timeout(upstream):
    upstream.script(tokens=TOKENS, fail="stall_mid_stream", fail_after=1, stall=5.0)
    quick = httpx.Timeout(connect=0.5, read=0.3, write=0.5, pool=0.5)

    async def silent():
        async with make_client(timeout=quick) as client:
            await run(client, upstream.base_url)

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(silent())
    assert raised.value.kind is ErrorKind.TIMEOUT
    assert "sent nothing for 0.3 s" in raised.value.message


def test_a_listener_that_never_accepts_is_a_connect_timeout():
    # A full accept queue: the kernel drops further handshakes, so connecting hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = []
        try:
            for _ in range(4):
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)

            async def go():
                await network.SocketBackend().connect_tcp("127.0.0.1", port, timeout=0.3)

            with pytest.raises(httpcore.ConnectTimeout):
                asyncio.run(go())
        finally:
            for filler in fillers:
                filler.close()


def test_a_reset_mid_stream_is_a_dropped_connection(upstream):
    upstream.script(tokens=TOKENS * 4, fail="reset_mid_stream", fail_after=2)

    async def go():
        async with make_client() as client:
            await run(client, upstream.base_url)

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(go())
    assert raised.value.kind is ErrorKind.UNAVAILABLE
    assert "dropped" in raised.value.message


def test_the_runs_deadline_holds_when_data_is_always_waiting(upstream, settings):
    # Keep-alive pings every 0.2 s, read after pauses: every read finds data already there.
    settings.UPSTREAM_TOTAL_TIMEOUT = 1.0
    upstream.script(tokens=TOKENS, fail="never_ends", fail_after=2, stall=0.05)

    async def go():
        async with make_client() as client:
            stream = stream_completion(
                client, backend(upstream.base_url), REQUEST, read_interval=0.1
            )
            async with contextlib.aclosing(stream) as deltas:
                async for _ in deltas:
                    pass

    with pytest.raises(UpstreamError) as raised:
        asyncio.run(go())
    assert raised.value.kind is ErrorKind.TIMEOUT
    assert "time limit" in raised.value.message


def test_a_read_yields_to_the_loop_even_when_data_is_waiting():
    # What keeps a fast upstream from holding the event loop, and lets a deadline land.
    async def go():
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.sendall(b"already here")
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "other task")
        data = await network.SocketStream(ours).read(1024)
        seen = list(ran)  # as the read returned
        ours.close()
        theirs.close()
        return data, seen

    assert asyncio.run(go()) == (b"already here", ["other task"])


def test_a_tls_read_yields_to_the_loop_even_when_data_is_buffered():
    async def go():
        reader = asyncio.StreamReader()
        reader.feed_data(b"decrypted already")
        ran: list[str] = []
        asyncio.get_running_loop().call_soon(ran.append, "other task")
        data = await network.TLSStream(reader, writer=None).read(1024)
        return data, list(ran)

    assert asyncio.run(go()) == (b"decrypted already", ["other task"])


def test_a_finished_stream_hands_its_connection_back_for_the_next_run(upstream):
    upstream.script(tokens=TOKENS, chunk_delay=0.01)
    upstream.script(tokens=TOKENS)

    async def go():
        async with make_client() as client:
            return [await run(client, upstream.base_url) for _ in range(2)]

    assert asyncio.run(go()) == ["".join(TOKENS)] * 2
    assert upstream.connections == 1, "the second run reused the first one's connection"


def test_a_server_holding_the_body_open_after_done_is_not_waited_for(upstream):
    upstream.script(tokens=TOKENS, fail="holds_after_done", stall=30)
    upstream.script(tokens=TOKENS)

    async def go():
        async with make_client() as client:
            return [await run(client, upstream.base_url) for _ in range(2)]

    # Without a bound on the wait for the body's end, the first run would take 30 s.
    assert asyncio.run(go()) == ["".join(TOKENS)] * 2
    assert upstream.connections == 2, "the held connection was closed, not pooled"


# --- The pool's bookkeeping (network.LinearPool) -------------------------------------------------


def pooled_client(max_connections: int, keepalive: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=keepalive)
    client = httpx.AsyncClient(limits=limits, timeout=5.0)
    assert network.install(client._transport)
    assert isinstance(client._transport._pool, network.LinearPool)
    return client


def test_more_streams_than_connections_wait_their_turn_and_reuse_them(upstream):
    upstream.default = upstream.script(tokens=TOKENS, chunk_delay=0.01)

    async def go():
        async with pooled_client(3, 3) as client:
            runs = [run(client, upstream.base_url) for _ in range(12)]
            return await asyncio.gather(*runs), len(client._transport._pool.connections)

    texts, pooled = asyncio.run(go())
    assert texts == ["".join(TOKENS)] * 12
    assert upstream.connections == 3, "never more than the limit, and each one reused"
    assert pooled == 3


def test_idle_connections_past_the_keepalive_limit_are_closed(upstream):
    upstream.default = upstream.script(tokens=TOKENS, chunk_delay=0.01)

    async def go():
        async with pooled_client(6, 2) as client:
            first = await asyncio.gather(*[run(client, upstream.base_url) for _ in range(6)])
            kept = len(client._transport._pool.connections)
            second = await asyncio.gather(*[run(client, upstream.base_url) for _ in range(6)])
            return first + second, kept

    texts, kept = asyncio.run(go())
    assert texts == ["".join(TOKENS)] * 12
    assert kept == 2
    assert upstream.connections == 6 + 4, "the second six reused the two kept connections"


def test_the_apps_client_keeps_a_whole_burst_of_connections_for_the_next_one(upstream, settings):
    # httpx keeps 20 idle connections: a burst of 30 runs would reopen 10 for the next burst,
    # each a TLS handshake against an https upstream.
    settings.UPSTREAM_MAX_CONNECTIONS = 40
    upstream.default = upstream.script(tokens=TOKENS, chunk_delay=0.01)

    async def go():
        async with make_client() as client:
            bursts = []
            for _ in range(2):
                bursts += await asyncio.gather(*[run(client, upstream.base_url) for _ in range(30)])
            return bursts

    assert asyncio.run(go()) == ["".join(TOKENS)] * 60
    assert upstream.connections == 30, "the second burst reused every connection of the first"


def test_a_full_pool_closes_an_idle_connection_for_another_origin(upstream):
    upstream.script(tokens=TOKENS)
    with running_upstream() as other:
        other.script(tokens=TOKENS)

        async def go():
            async with pooled_client(1, 1) as client:
                first = await run(client, upstream.base_url)
                second = await run(client, other.base_url)
                origin = httpcore.URL(other.base_url).origin
                return (
                    first,
                    second,
                    [c.can_handle_request(origin) for c in client._transport._pool.connections],
                )

        first, second, serves_other = asyncio.run(go())
    assert first == second == "".join(TOKENS)
    assert serves_other == [True], "the first origin's idle connection made room for the other's"


def test_a_connection_waiting_for_its_request_is_not_given_to_another(upstream, monkeypatch):
    upstream.default = upstream.script(tokens=TOKENS, chunk_delay=0.01)
    retries = []
    clear = httpcore._async.connection_pool.AsyncPoolRequest.clear_connection

    def counted(self):
        retries.append(self)
        clear(self)

    monkeypatch.setattr(
        httpcore._async.connection_pool.AsyncPoolRequest, "clear_connection", counted
    )

    async def go():
        async with pooled_client(4, 4) as client:
            await run(client, upstream.base_url)  # leaves one idle connection
            return await asyncio.gather(*[run(client, upstream.base_url) for _ in range(3)])

    texts = asyncio.run(go())
    assert texts == ["".join(TOKENS)] * 3
    # The idle connection went to the first request; the others got new ones at once instead
    # of being handed the same connection before it was used, then failing over to a new one.
    assert retries == []
    assert upstream.connections == 3


# A response's close, as httpcore does it after the body's end: where a cancellation can land.
HTTP11 = httpcore._async.http11.AsyncHTTP11Connection


def test_a_cancellation_during_a_responses_close_leaves_nothing_in_the_pool(upstream, monkeypatch):
    upstream.default = upstream.script(tokens=TOKENS)
    close = HTTP11._response_closed

    async def go():
        closing = asyncio.Event()

        async def held(self):
            closing.set()
            await asyncio.Event().wait()  # a close that waits (the connection's lock, a busy loop)

        monkeypatch.setattr(HTTP11, "_response_closed", held)
        async with pooled_client(4, 4) as client:
            pool = client._transport._pool
            task = asyncio.create_task(run(client, upstream.base_url))
            await closing.wait()
            (connection,) = pool.connections
            task.cancel()  # as the browser leaving does: asyncio's cancellation, not anyio's
            with pytest.raises(asyncio.CancelledError):
                await task
            left = (len(pool._requests), len(pool.connections))
            await asyncio.gather(*network._closing)
            monkeypatch.setattr(HTTP11, "_response_closed", close)
            return left, connection.is_closed(), await run(client, upstream.base_url)

    left, closed, text = asyncio.run(go())
    # Before network._ReleasingStream, the request stayed in the pool holding its connection
    # for good: about half of 200 simultaneous streams in the bench left one each time.
    assert left == (0, 0)
    assert closed, "the half-closed connection is closed, not reused"
    assert text == "".join(TOKENS)


def test_a_close_slower_than_the_wait_for_the_bodys_end_still_pools_its_connection(
    upstream, monkeypatch
):
    upstream.default = upstream.script(tokens=TOKENS)
    close = HTTP11._response_closed
    # Room for the body's end to be read on a slow machine; a close that outlasts the bound.
    monkeypatch.setattr(completions, "_BODY_END_SECONDS", 0.2)

    async def slow(self):
        await asyncio.sleep(0.5)  # the close's wait on a busy worker, past the bound
        await close(self)

    monkeypatch.setattr(HTTP11, "_response_closed", slow)

    async def go():
        async with make_client() as client:
            texts = [await run(client, upstream.base_url) for _ in range(2)]
            return texts, len(client._transport._pool._requests)

    texts, requests = asyncio.run(go())
    assert texts == ["".join(TOKENS)] * 2
    assert requests == 0
    # With asyncio.timeout as the bound, its cancellation cut the close short: the connection
    # was lost (or, before network._ReleasingStream, kept by its request forever).
    assert upstream.connections == 1, "the close finished and the next run reused it"


# --- chunked bodies: every chunk already received in one piece --------------------------------


def _chunked(frames: list[bytes]) -> bytes:
    return b"".join(map(_http_chunk, frames)) + b"0\r\n\r\n"


def _read_body(wire: bytes, splits: list[int], merged: bool) -> tuple[list[bytes], object]:
    """The Data pieces and the final event of a chunked response fed to h11 in `splits`."""
    import h11

    connection = h11.Connection(h11.CLIENT)
    connection.send(h11.Request(method="POST", target="/", headers=[("Host", "x")]))
    connection.send(h11.EndOfMessage())
    connection.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert type(connection.next_event()) is h11.Response
    if merged:
        network._merge_chunks(types.SimpleNamespace(_h11_state=connection))
        assert type(connection._reader) is network.MergedChunks
    pieces: list[bytes] = []
    at = 0
    for cut in [*splits, len(wire)]:
        connection.receive_data(wire[at:cut])
        at = cut
        while (event := connection.next_event()) is not h11.NEED_DATA:
            if type(event) is not h11.Data:
                return pieces, event
            pieces.append(bytes(event.data))
    return pieces, None


def test_whole_chunks_already_received_come_as_one_piece():
    import h11

    frames = [b'data: {"text": "t%d"}\n\n' % i for i in range(10)]
    wire = _chunked(frames)
    plain, _ = _read_body(wire, [], merged=False)
    assert len(plain) == 10  # h11's own reader: a piece per chunk, as an upstream sends tokens
    pieces, end = _read_body(wire, [], merged=True)
    assert pieces == [b"".join(frames)]
    assert type(end) is h11.EndOfMessage
    # Split mid-way through the sixth chunk: that read's pieces come as one, the rest next.
    body, at = b"".join(frames), len(b"".join(frames[:5])) + 7
    pieces, end = _read_body(wire, [wire.index(frames[5]) + 7], merged=True)
    assert pieces == [body[:at], body[at:]]
    assert type(end) is h11.EndOfMessage


def test_merged_chunks_read_the_same_bytes_and_ends_wherever_reads_split():
    """Against h11's own reader, on random bodies split at random: chunk extensions, trailers,
    empty frames, every split point (inside size lines, CRLFs and data)."""
    import random

    import h11

    rng = random.Random(6)  # noqa: S311 (test data, not secrets)
    for _ in range(300):
        frames = [rng.randbytes(rng.choice([1, 2, 15, 16, 300])) for _ in range(rng.randint(1, 12))]
        wire = b"".join(
            b"%x%s\r\n%s\r\n" % (len(f), rng.choice([b"", b";ext=1", b" "]), f) for f in frames
        )
        wire += b"0\r\n" + rng.choice([b"", b"X-Trailer: yes\r\n"]) + b"\r\n"
        splits = sorted(rng.sample(range(1, len(wire)), min(len(wire) - 1, rng.randint(0, 8))))
        plain, plain_end = _read_body(wire, splits, merged=False)
        pieces, end = _read_body(wire, splits, merged=True)
        assert b"".join(pieces) == b"".join(plain) == b"".join(frames)
        assert type(end) is type(plain_end) is h11.EndOfMessage
        assert end.headers == plain_end.headers
        assert len(pieces) <= len(splits) + 1  # at most a piece per read (the trailer aside)


def test_a_malformed_chunk_after_whole_ones_is_refused_as_h11_refuses_it():
    import h11

    good = [b"data: 1\n\n", b"data: 2\n\n"]
    wire = _chunked(good)[: -len(b"0\r\n\r\n")] + b"zz\r\nnope\r\n0\r\n\r\n"
    for merged in (False, True):
        with pytest.raises(h11.RemoteProtocolError, match="illegal chunk header"):
            _read_body(wire, [], merged=merged)


def test_a_paced_chunked_upstream_is_read_a_few_tokens_at_a_time(upstream, monkeypatch):
    """Every server streams a token per HTTP chunk. The relay pauses after each small piece it
    reads; with a piece per chunk it paused after every token, and a chunked upstream's tokens
    came through at one per pause (20 a second). Now a pause is taken per read, each read
    taking the several tokens that arrived meanwhile."""
    from playground import completions

    tokens = [f" t{i}" for i in range(80)]
    upstream.script(tokens=tokens, chunk_delay=0.005)
    pauses: list[float] = []
    pause = completions._read_pause

    def counted(*args):
        pauses.append(pause(*args))
        return pauses[-1]

    monkeypatch.setattr(completions, "_read_pause", counted)
    request = CompletionRequest(model="m", prompt="def f():", max_tokens=200, logprobs=2)

    async def go():
        client = make_client()
        try:
            texts = []
            run = stream_completion(client, backend(upstream.base_url), request, read_interval=0.05)
            async with contextlib.aclosing(run) as deltas:
                async for delta in deltas:
                    texts.append((delta.text, len(delta.tokens)))
            return texts
        finally:
            await client.aclose()

    texts = asyncio.run(go())
    assert "".join(t for t, _ in texts) == "".join(tokens)
    assert sum(n for _, n in texts) == len(tokens)
    # 80 tokens 5 ms apart: 0.4 s, a pause of 50 ms after each read: about eight reads, where a
    # piece per token made 79. Half as many as tokens leaves room for a slow machine, whose
    # upstream thread would send them further apart.
    assert len(pauses) < len(tokens) // 2, f"{len(pauses)} pauses for {len(tokens)} tokens"
