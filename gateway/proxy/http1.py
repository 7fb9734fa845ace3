"""A lean HTTP/1.1 client for upstreams: pooled keep-alive connections, one write per request
and the reply parsed by llhttp (httptools).

py-spy put aiohttp's client at a quarter of the gateway's CPU under load. A proxy needs little
of what it does per request (cookies, redirects, tracing, URL objects, payload registry,
timer handles), so the forwarding step uses this instead."""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
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


class UpstreamProtocolError(Exception):
    """The upstream answered with something that is not HTTP/1.x."""


class UpstreamClosed(ConnectionError):
    """The connection closed before the whole reply arrived."""


@dataclass(frozen=True, slots=True)
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


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
        self.reusable = False
        self.received = False  # any byte of the current reply arrived
        self._reply: asyncio.Future[RawReply] | None = None
        self._head_only = False
        self._informational = False
        self._until_eof = False
        self._headers_done = False
        self._status = 0
        self._headers: list[tuple[str, str]] = []
        self._body: list[bytes] = []

    def send(self, head: bytes, body: bytes, *, head_only: bool) -> asyncio.Future[RawReply]:
        """Write one request; the future resolves with its whole reply."""
        assert self._transport is not None
        self._reply = asyncio.get_running_loop().create_future()
        self._head_only = head_only
        self.received = False
        self._reset_message()
        if len(body) < _JOIN_BELOW:
            self._transport.write(head + body)
        else:
            self._transport.writelines((head, body))
        return self._reply

    def expire(self) -> None:
        """The request's time is up: fail it (TimeoutError) and drop the connection."""
        self._fail(TimeoutError())

    # asyncio.Protocol

    def data_received(self, data: bytes) -> None:
        self.received = True
        if self._reply is None or self._reply.done():
            self.abort()  # bytes nobody asked for: the connection can no longer be trusted
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(UpstreamProtocolError("the upstream switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(UpstreamProtocolError(str(exc) or type(exc).__name__))

    def eof_received(self) -> bool | None:
        self.closed = True  # at once: the pool must not hand it out in the meantime
        self._end_of_stream(clean=True)
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._end_of_stream(clean=exc is None)

    # httptools callbacks

    def on_message_begin(self) -> None:
        if self._reply is not None and self._reply.done():
            # More bytes after the whole reply, in the same read: the upstream cannot be
            # trusted with another request on this connection.
            self.reusable = False
            self.abort()
            self._headers, self._body = [], []  # leave the reply already given untouched

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-length" or (
            # RFC 9112 6.3: a body framed by Transfer-Encoding ends with its chunked coding;
            # any other coding runs to the end of the connection.
            lowered == b"transfer-encoding" and value.rstrip().lower().endswith(b"chunked")
        ):
            self._until_eof = False
        self._headers.append(
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        )

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        if 100 <= self._status < 200:
            self._informational = True  # e.g. 100 Continue: the real reply follows
        elif self._head_only:
            # llhttp cannot be told the request was HEAD and would wait for a body that never
            # comes; the reply is whole now, and this connection is not reused.
            self._finish(reusable=False)
        elif self._status in (204, 304):
            self._until_eof = False

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._informational:
            self._reset_message()
            return
        self._finish(reusable=self._parser.should_keep_alive())

    # internals

    def _reset_message(self) -> None:
        self._informational = False
        self._headers_done = False
        self._until_eof = True  # until a length header says otherwise
        self._headers = []
        self._body = []

    def _end_of_stream(self, *, clean: bool) -> None:
        if self._reply is None or self._reply.done():
            return
        if clean and self._headers_done and self._until_eof and not self._informational:
            # A body delimited by the end of the connection is whole only if the connection
            # ended cleanly; a reset cuts it short (SPEC 4: charge only a fully received body).
            self._finish(reusable=False)
        else:
            self._fail(UpstreamClosed("the upstream closed the connection mid-reply"))

    def _finish(self, *, reusable: bool) -> None:
        assert self._reply is not None
        self.reusable = reusable and not self.closed
        if not self._reply.done():
            self._reply.set_result(RawReply(self._status, self._headers, b"".join(self._body)))

    def _fail(self, exc: Exception) -> None:
        self.abort()
        if self._reply is not None and not self._reply.done():
            self._reply.set_exception(exc)


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
    ) -> RawReply:
        """Send one request and read its whole reply, within `timeout_s` in all (connecting
        included, which alone may take at most `connect_timeout_s`)."""
        origin = self._origin(base_url)
        head = _head(origin, method, path_qs, headers, body)
        head_only = method == "HEAD"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        connection = self._take_idle(origin)
        if connection is not None:
            try:
                return await self._exchange(origin, connection, head, body, head_only, deadline)
            except UpstreamClosed:
                if connection.received or not _replayable(method, headers):
                    raise
        async with asyncio.timeout_at(min(deadline, loop.time() + connect_timeout_s)):
            connection = await self._connect(origin)
        return await self._exchange(origin, connection, head, body, head_only, deadline)

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
        deadline: float,
    ) -> RawReply:
        loop = asyncio.get_running_loop()
        # One timer handle per request: cheaper than an asyncio.timeout context on this path.
        timer = loop.call_at(deadline, connection.expire)
        try:
            reply = await connection.send(head, body, head_only=head_only)
        except BaseException:
            connection.abort()  # timeout, cancellation or a broken reply: never reuse it
            raise
        finally:
            timer.cancel()
        idle = origin.idle
        now = loop.time()
        # Reuse takes the newest, so the oldest idle connections are dropped here, from the
        # other end, once they expire: after a burst the pool shrinks back by itself.
        while idle and not self._usable(idle[0], now):
            idle.popleft().close()
        if connection.reusable and len(idle) < self._max_idle:
            connection.idle_since = now
            idle.append(connection)
        else:
            connection.close()
        return reply

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
