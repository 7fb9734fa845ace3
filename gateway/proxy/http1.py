"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, one write per request,
the reply parsed by llhttp (httptools) and its body handed on as it arrives.

py-spy put aiohttp's client at a quarter of the gateway's CPU under load. A proxy needs little
of what it does per request (cookies, redirects, tracing, URL objects, payload registry,
timer handles), so the forwarding step uses this instead."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httptools

from gateway.protocol import ClientProtocol

# A request that failed on a reused connection before any byte of reply arrived (the upstream
# closed it while idle) is sent once more on a fresh connection, if sending it twice is safe.
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_EXPECTED = frozenset({"POST", "PUT", "PATCH"})
# Small bodies go out in the same write as the head; big ones are not copied to join them.
_JOIN_BELOW = 64 * 1024
# SPEC 4, the edge: an upstream head beyond these is refused (502), never relayed.
MAX_HEADERS = 100
MAX_HEAD_BYTES = 64 * 1024
# Body bytes read ahead of the consumer: past the high mark the socket stops being read.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024


class UpstreamProtocolError(Exception):
    """The upstream answered with something that is not HTTP/1.x, or a head over the limits."""


class UpstreamClosed(ConnectionError):
    """The connection closed before the whole reply arrived."""


class UpstreamResponse:
    """A reply whose head has arrived. Its body parts come from read() as the upstream sends
    them (b"" at the end); `complete` says the whole body arrived."""

    __slots__ = (
        "_chunks",
        "_connection",
        "_error",
        "_paused",
        "_size",
        "_waiter",
        "content_length",
        "done",
        "headers",
        "status",
    )

    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]],
        connection: _Connection,
        content_length: int | None,
    ) -> None:
        self.status = status
        self.headers = headers
        self.content_length = content_length  # as the upstream declared it
        self.done = False  # the whole body arrived
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._size = 0  # bytes received and not yet read
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    @property
    def complete(self) -> bool:
        """The whole body arrived."""
        return self.done and self._error is None

    def take_all(self) -> bytes:
        """What arrived and was not read yet, at once (the whole body when complete)."""
        chunks, self._chunks = self._chunks, deque()
        self._size = 0
        return b"".join(chunks)

    async def read(self) -> bytes:
        """The next part of the body, b"" once it is whole; raises what cut it short."""
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self.done:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._paused and self._size <= _LOW_WATER:
            self._paused = False
            self._connection.resume()
        return chunk

    def abort(self) -> None:
        """The reader gives up: the connection is dropped, so the upstream sees it."""
        if not self.done:
            self._connection.abort()

    # called by the connection

    def _feed(self, chunk: bytes) -> None:
        self._chunks.append(chunk)
        self._size += len(chunk)
        if not self._paused and self._size > _HIGH_WATER:
            self._paused = True
            self._connection.pause()
        self._wake()

    def _end(self, error: BaseException | None) -> None:
        if self.done or self._error is not None:
            return
        if error is None:
            self.done = True
        else:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


@dataclass(slots=True)
class _Origin:
    """Where an upstream URL points, and its pool of idle connections (newest last)."""

    host: str
    port: int
    tls: bool
    host_header: str
    base_path: str
    idle: deque[_Connection] = field(default_factory=deque)


class _Connection(ClientProtocol):
    """One keep-alive connection to an origin; it carries one exchange at a time."""

    def __init__(self) -> None:
        super().__init__()
        self._parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.received = False  # any byte of the current reply arrived
        self._head: asyncio.Future[UpstreamResponse] | None = None
        self._reply: UpstreamResponse | None = None
        self._on_reusable: Callable[[_Connection], None] | None = None
        self._busy = False
        self._head_only = False
        self._informational = False
        self._until_eof = False
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._content_length: int | None = None
        self._chunked = False
        # The deadline: `_timeout_s` without a byte from the upstream (reading paused for a
        # slow client does not count), checked by one timer re-armed only when it fires.
        self._timeout_s = 0.0
        self._last_read = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._reading = True

    def send(
        self,
        head: bytes,
        body: bytes,
        *,
        head_only: bool,
        timeout_s: float,
        on_reusable: Callable[[_Connection], None],
    ) -> asyncio.Future[UpstreamResponse]:
        """Write one request; the future resolves once the reply's head arrived."""
        assert self._transport is not None
        loop = asyncio.get_running_loop()
        self._head = loop.create_future()
        self._reply = None
        self._on_reusable = on_reusable
        self._busy = True
        self._head_only = head_only
        self.received = False
        self._reset_message()
        self._timeout_s = timeout_s
        self._last_read = loop.time()
        self._timer = loop.call_at(self._last_read + timeout_s, self._check_deadline)
        if len(body) < _JOIN_BELOW:
            self._transport.write(head + body)
        else:
            self._transport.writelines((head, body))
        return self._head

    def pause(self) -> None:
        if self._transport is not None and self._reading:
            self._reading = False
            self._transport.pause_reading()

    def resume(self) -> None:
        if self._transport is not None and not self._reading and not self.closed:
            self._reading = True
            self._last_read = asyncio.get_running_loop().time()
            self._transport.resume_reading()

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        if not self._busy:
            # Bytes nobody asked for on an idle connection (a late or extra response): it can
            # no longer be trusted, and the pool must never hand it out.
            self.abort()
            return
        self.received = True
        if self._timeout_s:
            self._last_read = asyncio.get_running_loop().time()
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(str(exc) or type(exc).__name__))
        except UpstreamProtocolError as exc:  # raised by a callback: a head over the limits
            self._fail(exc)
        # Resolved after the whole read was parsed, so a body that came in the same packets
        # as the head is already complete when the caller looks.
        if self._reply is not None and self._head is not None and not self._head.done():
            self._head.set_result(self._reply)

    def eof_received(self) -> bool | None:
        self.closed = True  # at once: the pool must not hand it out in the meantime
        self._end_of_stream(clean=True)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end_of_stream(clean=exc is None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._reply is not None:
            # A second message after the reply, in the same read: the upstream cannot be
            # trusted with another request on this connection.
            raise UpstreamProtocolError("bytes after the reply")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if len(self._headers) >= MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            raise UpstreamProtocolError(
                f"the upstream's head exceeds {MAX_HEADERS} headers or {MAX_HEAD_BYTES} bytes"
            )
        lowered = name.lower()
        if lowered == b"content-length":
            self._until_eof = False
            if value.strip().isdigit():
                self._content_length = int(value)
        elif lowered == b"transfer-encoding":
            self._chunked = True  # framed by its coding, whatever a Content-Length says
            # RFC 9112 6.3: a body framed by Transfer-Encoding ends with its chunked coding;
            # any other coding runs to the end of the connection.
            self._until_eof = not value.rstrip().lower().endswith(b"chunked")
        self._headers.append((name.decode("latin-1"), _header_value(value)))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if 100 <= self._status < 200:
            self._informational = True  # e.g. 100 Continue: the real reply follows
            return
        length = None if self._chunked else self._content_length
        self._reply = UpstreamResponse(self._status, self._headers, self, length)
        if self._head_only:
            # llhttp cannot be told the request was HEAD and would wait for a body that never
            # comes; the reply is whole now, and this connection is not reused.
            self._finish(reusable=False)
        elif self._status in (204, 304):
            self._until_eof = False

    def on_body(self, body: bytes) -> None:
        if self._reply is not None and not self._reply.done:
            self._reply._feed(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._reset_message()
            return
        if self._reply is not None and not self._reply.done:
            self._finish(reusable=self._parser.should_keep_alive())

    # internals

    def _check_deadline(self) -> None:
        self._timer = None
        if not self._busy:
            return
        loop = asyncio.get_running_loop()
        due = self._last_read + self._timeout_s
        if not self._reading or due > loop.time():
            self._timer = loop.call_at(max(due, loop.time() + 0.1), self._check_deadline)
            return
        self._fail(TimeoutError())

    def _reset_message(self) -> None:
        self._informational = False
        self._until_eof = True  # until a length header says otherwise
        self._headers = []
        self._head_bytes = 0
        self._content_length = None
        self._chunked = False

    def _end_of_stream(self, *, clean: bool) -> None:
        if not self._busy:
            return
        if clean and self._reply is not None and self._until_eof and not self._informational:
            # A body delimited by the end of the connection is whole only if the connection
            # ended cleanly; a reset cuts it short (SPEC 4: charge only a fully received body).
            self._finish(reusable=False)
        else:
            self._fail(UpstreamClosed("the upstream closed the connection mid-reply"))

    def _finish(self, *, reusable: bool) -> None:
        assert self._reply is not None
        self._busy = False
        self._stop_timer()
        self._reply._end(None)
        if reusable and not self.closed and self._on_reusable is not None:
            self._on_reusable(self)
        else:
            self.close()

    def _fail(self, exc: BaseException) -> None:
        was_busy, self._busy = self._busy, False
        self._stop_timer()
        self.abort()
        if not was_busy:
            return
        if self._head is not None and not self._head.done():
            self._head.set_exception(exc)
        elif self._reply is not None:
            self._reply._end(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class UpstreamClient:
    """Keep-alive pools per origin. Idle connections are reused newest first and dropped after
    `idle_timeout_s` (as aiohttp's client does), before most servers close them."""

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext | None = None,
        idle_timeout_s: float = 15.0,
        max_idle_per_origin: int = 1024,
    ) -> None:
        self._ssl_context = ssl_context
        self._idle_timeout_s = idle_timeout_s
        self._max_idle = max_idle_per_origin
        self._origins: dict[str, _Origin] = {}

    async def request(
        self,
        base_url: str,
        method: str,
        path_qs: str,
        headers: list[tuple[str, str]],
        body: bytes,
        *,
        timeout_s: float,
        connect_timeout_s: float,
    ) -> UpstreamResponse:
        """Send one request and wait for its reply's head. `timeout_s` bounds every wait for
        the upstream (connecting included, which alone may take at most `connect_timeout_s`):
        for the head, then for each part of the body."""
        origin = self._origin(base_url)
        head = _head(origin, method, path_qs, headers, body)
        head_only = method == "HEAD"
        connection = self._take_idle(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, head, body, head_only, timeout_s)
            except UpstreamClosed:
                if connection.received or not _replayable(method, headers):
                    raise
        async with asyncio.timeout(min(timeout_s, connect_timeout_s)):
            connection = await self._connect(origin)
        return await self._exchange(origin, connection, head, body, head_only, timeout_s)

    async def close(self) -> None:
        for origin in self._origins.values():
            for connection in origin.idle:
                connection.close()
            origin.idle.clear()

    async def _exchange(
        self,
        origin: _Origin,
        connection: _Connection,
        head: bytes,
        body: bytes,
        head_only: bool,
        timeout_s: float,
    ) -> UpstreamResponse:
        try:
            return await connection.send(
                head,
                body,
                head_only=head_only,
                timeout_s=timeout_s,
                on_reusable=lambda done: self._release(origin, done),
            )
        except BaseException:
            connection.abort()  # timeout, cancellation or a broken reply: never reuse it
            raise

    def _release(self, origin: _Origin, connection: _Connection) -> None:
        """A reply is whole and its connection may carry another: back to the pool."""
        idle = origin.idle
        now = asyncio.get_running_loop().time()
        # Reuse takes the newest, so the oldest idle connections are dropped here, from the
        # other end, once they expire: after a burst the pool shrinks back by itself.
        while idle and not self._usable(idle[0], now):
            idle.popleft().close()
        if len(idle) < self._max_idle:
            connection.idle_since = now
            idle.append(connection)
        else:
            connection.close()

    def _take_idle(self, origin: _Origin) -> _Connection | None:
        now = asyncio.get_running_loop().time()
        while origin.idle:
            connection = origin.idle.pop()
            if self._usable(connection, now):
                return connection
            connection.close()
        return None

    def _usable(self, connection: _Connection, now: float) -> bool:
        return not connection.closed and connection.idle_since > now - self._idle_timeout_s

    async def _connect(self, origin: _Origin) -> _Connection:
        _, connection = await asyncio.get_running_loop().create_connection(
            _Connection,
            origin.host,
            origin.port,
            ssl=self._tls() if origin.tls else None,
            server_hostname=origin.host if origin.tls else None,
        )
        return connection

    def _tls(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _origin(self, base_url: str) -> _Origin:
        origin = self._origins.get(base_url)
        if origin is None:
            origin = self._origins[base_url] = _parse_origin(base_url)
        return origin


def _header_value(raw: bytes) -> str:
    """UTF-8 when it is, else Latin-1 (RFC 9110's obs-text): aiohttp writes header values as
    UTF-8 and silently drops what it cannot, so a byte like \xe9 must become a character."""
    try:
        return raw.decode()
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _parse_origin(base_url: str) -> _Origin:
    parts = urlsplit(base_url)
    tls = parts.scheme == "https"
    default_port = 443 if tls else 80
    port = parts.port or default_port
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    return _Origin(
        host=host,
        port=port,
        tls=tls,
        host_header=shown if port == default_port else f"{shown}:{port}",
        base_path=parts.path.rstrip("/"),
    )


def _head(
    origin: _Origin, method: str, path_qs: str, headers: list[tuple[str, str]], body: bytes
) -> bytes:
    lines = [f"{method} {origin.base_path}{path_qs} HTTP/1.1\r\nHost: {origin.host_header}\r\n"]
    lines += [f"{name}: {value}\r\n" for name, value in headers]
    if body or method in _BODY_EXPECTED:
        lines.append(f"Content-Length: {len(body)}\r\n")
    lines.append("\r\n")
    # Header values arrive decoded with surrogateescape: this gives back the client's bytes.
    return "".join(lines).encode("utf-8", "surrogateescape")


def _replayable(method: str, headers: list[tuple[str, str]]) -> bool:
    return method in _IDEMPOTENT or any(name.lower() == "idempotency-key" for name, _ in headers)
