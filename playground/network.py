"""The upstream client's sockets: an httpcore network backend on the event loop's socket calls.

httpx reads through httpcore, and httpcore through a "network backend". Its default, anyio, puts
each read of a stream behind a cancel scope, a protocol buffer and a pause/resume of the socket's
polling: on a paced upstream (one small chunk per token) that machinery cost the relay more CPU
than everything else it does per token (docs/PERFORMANCE.md). This backend does the same job
with the event loop's own socket calls: a read yields to the loop once (so cancellations and
other tasks still get their turn), takes whatever the kernel already holds (after the relay's
short pause between reads, usually several tokens' worth) without polling, and only waits with
`loop.sock_recv` when nothing is there. A chunked response body (every server streams a token
per HTTP chunk) is read by `MergedChunks`, which gives h11's caller all the chunks already
received as one piece, not a piece per token. The pool (`LinearPool`) plans its connections in
one pass, and its responses give their request and connection back even when a cancellation
interrupts httpcore's close (`_ReleasingStream`). httpx, httpcore and h11 keep doing everything
else (HTTP/1.1 parsing, pooling, keep-alive, limits, proxies, timeouts' meaning), and
their exception types are raised exactly where anyio's backend raises them, so error handling
upstream of here (completions._error_from_exception) sees no difference.

TLS (hosted NIM is https) goes through asyncio's own SSL transport on the connected socket;
Unix sockets keep anyio's backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import h11
import httpcore
from h11._readers import ChunkedReader, chunk_header_re
from h11._receivebuffer import ReceiveBuffer
from httpcore._async.connection_pool import PoolByteStream
from httpcore._backends.anyio import AnyIOBackend
from httpcore._utils import is_socket_readable

if TYPE_CHECKING:
    from httpcore._async.connection_pool import AsyncPoolRequest

_TIMEOUT_MESSAGES = {
    httpcore.ConnectTimeout: "timed out while connecting",
    httpcore.ReadTimeout: "timed out while reading",
    httpcore.WriteTimeout: "timed out while writing",
}


@contextlib.asynccontextmanager
async def _mapped(timeout: float | None, on_timeout: type[Exception], on_error: type[Exception]):
    """Bound the block by `timeout` seconds and raise httpcore's exceptions, as anyio's backend
    does: a timeout becomes `on_timeout`, a socket error `on_error`."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        raise on_timeout(_TIMEOUT_MESSAGES.get(on_timeout, "timed out")) from None
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise on_error(str(exc) or type(exc).__name__) from exc


class SocketStream(httpcore.AsyncNetworkStream):
    """A connected non-blocking TCP socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._loop = asyncio.get_running_loop()

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # A checkpoint first, as anyio's reads make: a cancellation (the run's deadline, the
        # browser leaving) lands here even when data is waiting, and an upstream that is always
        # ahead of us cannot keep the event loop from the other streams.
        await asyncio.sleep(0)
        try:
            # What has already arrived is taken at once: no poll, no wake-up.
            return self._sock.recv(max_bytes)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            raise httpcore.ReadError(str(exc)) from exc
        async with _mapped(timeout, httpcore.ReadTimeout, httpcore.ReadError):
            return await self._loop.sock_recv(self._sock, max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        async with _mapped(timeout, httpcore.WriteTimeout, httpcore.WriteError):
            await self._loop.sock_sendall(self._sock, buffer)

    async def aclose(self) -> None:
        self._sock.close()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with _mapped(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
                reader, writer = await asyncio.open_connection(
                    sock=self._sock,
                    ssl=ssl_context,
                    server_hostname=server_hostname,
                    ssl_handshake_timeout=timeout or None,
                    limit=2**16,
                )
        except BaseException:
            self._sock.close()
            raise
        return TLSStream(reader, writer)

    def get_extra_info(self, info: str) -> Any:
        if info == "socket":
            return self._sock
        if info == "is_readable":
            # An idle pooled connection that is readable was closed (or spoken to) by the
            # server: httpcore then drops it instead of sending a request on it.
            return is_socket_readable(self._sock)
        if info == "client_addr":
            return self._sock.getsockname()
        if info == "server_addr":
            return self._sock.getpeername()
        return None


class TLSStream(httpcore.AsyncNetworkStream):
    """A TLS connection over asyncio's SSL transport."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        # A checkpoint, as in SocketStream.read: buffered data returns without suspending.
        await asyncio.sleep(0)
        async with _mapped(timeout, httpcore.ReadTimeout, httpcore.ReadError):
            return await self._reader.read(max_bytes)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        async with _mapped(timeout, httpcore.WriteTimeout, httpcore.WriteError):
            self._writer.write(buffer)
            await self._writer.drain()

    async def aclose(self) -> None:
        self._writer.close()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise httpcore.UnsupportedProtocol("TLS within TLS is not supported.")

    def get_extra_info(self, info: str) -> Any:
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "is_readable":
            # The SSL transport reads ahead into its buffer, so the socket alone cannot say.
            if self._reader.at_eof() or self._writer.is_closing():
                return True
            sock = self._writer.get_extra_info("socket")
            return sock is not None and is_socket_readable(sock)
        if info == "socket":
            return self._writer.get_extra_info("socket")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        return None


class SocketBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend on the running event loop's socket calls."""

    def __init__(self) -> None:
        self._unix = AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        async with _mapped(timeout, httpcore.ConnectTimeout, httpcore.ConnectError):
            addresses = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            if not addresses:
                raise OSError(f"no address for {host}")
            error: OSError | None = None
            for family, kind, proto, _, address in addresses:
                sock = socket.socket(family, kind, proto)
                try:
                    sock.setblocking(False)
                    # As asyncio's own connections do: small writes go out at once.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    for option in socket_options or ():
                        sock.setsockopt(*option)
                    if local_address:
                        sock.bind((local_address, 0))
                    await loop.sock_connect(sock, address)
                except OSError as exc:
                    sock.close()
                    error = exc
                    continue
                except BaseException:  # a timeout or a cancellation: no socket left behind
                    sock.close()
                    raise
                return SocketStream(sock)
            raise error or OSError(f"could not connect to {host}")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return await self._unix.connect_unix_socket(path, timeout, socket_options)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class LinearPool(httpcore.AsyncConnectionPool):
    """httpcore's connection pool, with its bookkeeping in one pass over the connections.

    httpcore re-plans the whole pool whenever a request starts or a response closes. Its plan
    scans every connection for each queued request, and for each idle connection builds a list
    of all connections (meaning to count the idle ones): with a few hundred streams open, that
    was about a tenth of a worker's CPU per generation request (docs/PERFORMANCE.md). This plan
    makes the same decisions in one pass: drop closed connections, close expired ones and idle
    ones past `max_keepalive_connections`, then give each queued request an available
    connection to its origin, else a new one, else make room by closing an idle one. Only the
    connections no request holds are asked their state (a few method calls each, through two
    layers): with 200 streams open, asking all of them on every start and close was a fifth of
    the worker's CPU for one-token runs. A connection goes to one request at a time (HTTP/1.1:
    the pool never enables HTTP/2 here), so two requests are never sent to the same
    connection only for one to retry.
    """

    def _assign_requests_to_connections(self) -> list[httpcore.AsyncConnectionInterface]:
        # A connection a request holds (assigned to it, sending or streaming its response) is
        # left as it is: it cannot be closed, counted idle or given to another request, so only
        # the others are asked their state. httpcore clears a request's connection or removes
        # the request before it plans again, so a connection leaves `held` as soon as it is free.
        held: set[httpcore.AsyncConnectionInterface] = set()
        queued: list[AsyncPoolRequest] = []
        for pool_request in self._requests:
            connection = pool_request.connection
            if connection is None:
                queued.append(pool_request)
            else:
                held.add(connection)
        closing: list[httpcore.AsyncConnectionInterface] = []
        kept: list[httpcore.AsyncConnectionInterface] = []
        idle: list[httpcore.AsyncConnectionInterface] = []
        available: list[httpcore.AsyncConnectionInterface] = []
        for connection in self._connections:
            if connection in held:
                kept.append(connection)
                continue
            if connection.is_closed():
                continue
            if connection.has_expired():
                closing.append(connection)
                continue
            if connection.is_idle():
                if len(idle) >= self._max_keepalive_connections:
                    closing.append(connection)
                    continue
                idle.append(connection)
            kept.append(connection)
            if connection.is_available():
                available.append(connection)
        self._connections = kept
        for pool_request in queued:
            origin = pool_request.request.url.origin
            connection = next((c for c in available if c.can_handle_request(origin)), None)
            if connection is not None:
                available.remove(connection)
                with contextlib.suppress(ValueError):
                    idle.remove(connection)  # taken: never the one closed to make room
            elif len(kept) >= self._max_connections:
                if not idle:
                    continue  # the pool is full: the request waits for a connection
                victim = idle.pop(0)
                kept.remove(victim)
                with contextlib.suppress(ValueError):
                    available.remove(victim)
                closing.append(victim)
            if connection is None:
                connection = self.create_connection(origin)
                kept.append(connection)
            pool_request.assign_to_connection(connection)
        return closing

    def create_connection(self, origin: httpcore.Origin) -> httpcore.AsyncConnectionInterface:
        connection = super().create_connection(origin)
        if type(connection) is httpcore.AsyncHTTPConnection and _MERGING:
            connection.__class__ = _Connection  # the same object; only the class changes
        return connection

    async def _close_connections(self, closing: list[httpcore.AsyncConnectionInterface]) -> None:
        if closing:  # httpcore enters a shielded cancel scope even for none
            await super()._close_connections(closing)

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        response = await super().handle_async_request(request)
        if type(response.stream) is PoolByteStream and _RELEASING:
            response.stream.__class__ = _ReleasingStream  # the same object; only the class
        return response


class _ReleasingStream(PoolByteStream):
    """httpcore's response body, whose close always gives its request back to the pool.

    httpcore closes a response in a shielded cancel scope, then removes its request from the
    pool. The shield is anyio's, and a native asyncio cancellation (`task.cancel()`: the browser
    leaving, a timeout) passes through it: one that lands while the close waits (the
    connection's lock, which yields to a busy event loop) skipped the removal, and httpcore
    marks the body closed first, so no later close did it. The request then held its connection
    for the life of the process, and every start and close of a request walked it: in the
    bench, about half of 200 simultaneous streams left one each time (docs/PERFORMANCE.md), and
    with the default pool of 100 a worker would in time have had no connection left to give.
    """

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await super().aclose()
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        """After a close that did not finish: forget the request and plan the pool again, as the
        close would have, and close the request's connection (its response may be half read, so
        it cannot be reused) in a task of its own, as the task this runs in is being cancelled."""
        pool = self._pool
        try:
            pool._requests.remove(self._pool_request)
        except ValueError:
            return  # the close failed after removing it, and the pool went on as usual
        closing = []
        connection = self._pool_request.connection
        if connection is not None and connection in pool._connections:
            pool._connections.remove(connection)
            closing.append(connection)
        closing += pool._assign_requests_to_connections()
        if closing:
            task = asyncio.ensure_future(pool._close_connections(closing))
            _closing.add(task)
            task.add_done_callback(_closing.discard)


_closing: set[asyncio.Future] = set()  # closes in flight, kept from the garbage collector
# What _ReleasingStream uses of httpcore's internals; an httpcore without them keeps its own.
_RELEASING = {"_closed", "_pool", "_pool_request"} <= set(PoolByteStream.__init__.__code__.co_names)


class MergedChunks(ChunkedReader):
    """h11's reader of a chunked body, giving all of the body already received as one piece.

    Servers stream each SSE message (one token) as its own HTTP chunk, and h11 makes each chunk
    a `Data` event, which httpcore and httpx hand up one by one. The relay pauses after each
    small piece it reads (`completions.stream_completion`'s `read_interval`), so one piece per
    token paced every token at that pause: 20 tokens a second from any chunked upstream, and
    each token climbing h11's, httpcore's and httpx's layers alone (docs/PERFORMANCE.md).

    This reader lets h11's own code read the first piece, then takes every following chunk
    already in the buffer, the last one perhaps in part, into the same event, checking each
    size line with h11's own pattern. What it does not take (the last chunk and its trailers,
    a size line not yet whole, one that does not match) h11's code reads next, or refuses, as
    before. The bytes are the same either way: chunk boundaries carry no meaning in HTTP, and
    httpcore passes on only `Data.data`.
    """

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        event = super().__call__(buf)
        if type(event) is not h11.Data or not event.chunk_end:
            return event  # the end, nothing yet, or the buffer ended inside the chunk
        # h11 stands after a chunk's data, before its CRLF; each next chunk is that CRLF, a size
        # line and its data.
        data = buf._data
        end = 0
        pieces: list[tuple[int, int]] = []
        chunk_end = True
        while data[end : end + 2] == b"\r\n":
            eol = data.find(b"\r\n", end + 2)
            if eol < 0:
                break
            header = chunk_header_re.fullmatch(data, end + 2, eol + 2)
            if header is None:
                break
            size = int(header["chunk_size"], 16)
            start = eol + 2
            if size == 0 or len(data) <= start:
                break  # the last chunk, or none of this one's data yet
            end = min(start + size, len(data))
            pieces.append((start, end))
            if end < start + size:
                # The buffer ends inside this chunk: h11 reads its rest as it comes, the same
                # state h11 is in after a chunk's first part (no CRLF owed yet).
                self._bytes_in_chunk = start + size - end
                self._bytes_to_discard = b""
                chunk_end = False
                break
        if not pieces:
            return event
        # Taken the way h11 takes bytes (which also resets its line-search marks).
        taken = buf._extract(end)
        merged = b"".join([event.data, *(taken[start:stop] for start, stop in pieces)])
        return h11.Data(data=merged, chunk_start=event.chunk_start, chunk_end=chunk_end)


# What MergedChunks uses of h11's internals; an h11 without them keeps its own reader.
_MERGING = (
    callable(getattr(ReceiveBuffer, "_extract", None))
    and isinstance(getattr(ReceiveBuffer(), "_data", None), bytearray)
    and {"_bytes_in_chunk", "_bytes_to_discard"} <= vars(ChunkedReader()).keys()
)


def _merge_chunks(connection: object) -> None:
    """Give an HTTP/1.1 connection's response body `MergedChunks` if h11 is to read it with its
    own chunked reader (not yet called: the response's headers were just read)."""
    state = getattr(connection, "_h11_state", None)
    if type(getattr(state, "_reader", None)) is ChunkedReader:
        state._reader = MergedChunks()


class _Connection(httpcore.AsyncHTTPConnection):
    """httpcore's connection, whose chunked response bodies are read by `MergedChunks`."""

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        response = await super().handle_async_request(request)
        _merge_chunks(getattr(self, "_connection", None))
        return response


def install(transport: object) -> bool:
    """Give an httpx transport's connection pool this backend, `LinearPool`'s bookkeeping and
    `MergedChunks` for its connections' chunked bodies;
    False if it has no such pool (a mock transport in tests, or an httpx whose internals moved:
    then httpcore's own stay)."""
    pool = getattr(transport, "_pool", None)
    if (
        type(pool) is not httpcore.AsyncConnectionPool
        or not hasattr(pool, "_network_backend")
        or not callable(getattr(pool, "_assign_requests_to_connections", None))
    ):
        return False
    pool._network_backend = SocketBackend()
    # The transport built the pool from the client's limits and TLS settings; only the class
    # changes, to one that adds no state of its own.
    pool.__class__ = LinearPool
    return True
