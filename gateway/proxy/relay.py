"""Relaying an upstream reply to the client as it arrives (SPEC 4, the edge): never buffered
whole, cut above `max_response_bytes`, and its last part held back until the request is
settled, so a client that has read the whole reply finds its slot free already."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.helpers import must_be_empty_body, rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE, HttpVersion10, HttpVersion11
from multidict import CIMultiDict

from gateway.context import REQUEST_ID, STARTED
from gateway.errors import GatewayError, UpstreamError
from gateway.proxy.upstream import UpstreamReply, read_part


class _AsSent:
    """A response whose Content-Type is the upstream's: aiohttp would add
    application/octet-stream to a body that came without one, which the upstream never said."""

    _typed: bool

    async def _prepare_headers(self) -> None:
        await super()._prepare_headers()  # type: ignore[misc]
        if not self._typed:
            self.headers.popall("Content-Type", None)  # type: ignore[attr-defined]


class _Response(_AsSent, web.Response):
    def __init__(self, *, status: int, body: bytes, headers: CIMultiDict[str]) -> None:
        self._typed = "Content-Type" in headers
        super().__init__(status=status, body=body, headers=headers)


class _Whole(web.StreamResponse):
    """A reply whose body came whole with its head, the common case, sent as aiohttp's
    Response sends it (same head, same keep-alive rules, the app's on_response_prepare) in
    fewer steps: its prepare and write_eof are a dozen coroutines deep, each costing about a
    microsecond on a busy box. Not for a body that must be empty (HEAD, 204, 304)."""

    def __init__(self, *, status: int, body: bytes, headers: CIMultiDict[str]) -> None:
        super().__init__(status=status, headers=headers)
        self._whole = body

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._eof_sent:
            return None
        if self._payload_writer is not None:
            return self._payload_writer
        self._must_be_empty_body = False
        self._req = request
        writer = self._payload_writer = request._payload_writer
        headers = self._headers
        keep_alive = self._keep_alive
        if keep_alive is None:
            keep_alive = self._keep_alive = request.keep_alive
        headers[hdrs.CONTENT_LENGTH] = str(len(self._whole))
        writer.length = len(self._whole)
        # No Content-Type unless the upstream sent one (as _AsSent).
        if hdrs.DATE not in headers:
            headers[hdrs.DATE] = rfc822_formatted_time()
        headers.setdefault(hdrs.SERVER, SERVER_SOFTWARE)
        version = request.version
        if hdrs.CONNECTION not in headers:
            if keep_alive:
                if version == HttpVersion10:
                    headers[hdrs.CONNECTION] = "keep-alive"
            elif version == HttpVersion11:
                headers[hdrs.CONNECTION] = "close"
        await request._prepare_hook(self)
        status_line = f"HTTP/{version[0]}.{version[1]} {self._status} {self._reason}"
        await writer.write_headers(status_line, headers)
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        if self._eof_sent:
            return
        writer = self._payload_writer
        assert writer is not None, "Response has not been started"
        await writer.write_eof(self._whole)  # the head and the body, in one write
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None


class _StreamResponse(_AsSent, web.StreamResponse):
    def __init__(self, *, status: int, headers: CIMultiDict[str]) -> None:
        self._typed = "Content-Type" in headers
        super().__init__(status=status, headers=headers)


@dataclass(slots=True)
class Relayed:
    """Where a relay stands once the upstream is done with it."""

    complete: bool = False  # the whole body arrived, within the limit
    gone: bool = False  # the client hung up on the way
    kept: list[bytes] | None = None  # the whole body, while it fits what replays keep
    last: bytes = b""  # the part held back until after settlement
    error: GatewayError | None = None  # what cut the body short
    response: web.StreamResponse | None = None  # None: nothing went to the client yet
    size: int = 0
    send_timeout_s: float = 30.0  # a client that takes no bytes for this long is cut


async def relay(
    request: web.Request,
    reply: UpstreamReply,
    headers: CIMultiDict[str],
    *,
    limit: int,
    keep_limit: int,
    send_timeout_s: float,
) -> Relayed:
    """Write the reply to the client part by part, all but the last; read to the end even if
    the client hangs up, so the caller knows whether the body was whole. `keep_limit` 0: keep
    nothing."""
    out = Relayed(kept=[] if keep_limit else None, send_timeout_s=send_timeout_s)
    declared = reply.body.content_length
    if declared is not None and declared > limit and request.method != "HEAD":
        reply.body.abort()
        out.error = _too_big(limit)
        return out
    if reply.body.complete:  # the whole body came with the head: the common case
        _add(out, reply.body.take_all(), limit, keep_limit)
        out.complete = out.error is None
        return out
    pending: bytes | None = None
    while True:
        try:
            part = await read_part(reply)
        except GatewayError as exc:
            out.error = exc
            break
        if not part:
            out.complete = True
            break
        _add(out, part, limit, keep_limit)
        if out.error is not None:
            reply.body.abort()
            break
        if pending is not None:
            await _write(request, reply, headers, out, pending)
        pending = part
    out.last = pending or b""
    return out


async def finish(
    request: web.Request, reply: UpstreamReply, headers: CIMultiDict[str], out: Relayed
) -> web.StreamResponse:
    """After settlement: the held-back part and the end, or a cut the client can see."""
    if not out.complete:
        if out.response is None:
            assert out.error is not None
            raise out.error  # nothing went out yet: the client gets the error itself
        transport = request.transport
        if transport is not None:  # a cut the client sees: never a short body taken as whole
            transport.abort()
        return out.response
    if out.response is None and request.method != "HEAD":
        if must_be_empty_body(request.method, reply.status):
            return _Response(status=reply.status, body=out.last, headers=headers)
        return _Whole(status=reply.status, body=out.last, headers=headers)
    await _write(request, reply, headers, out, out.last)
    assert out.response is not None
    if not out.gone:
        try:
            await out.response.write_eof()
        except ConnectionError:
            out.gone = True
    return out.response


def _add(out: Relayed, part: bytes, limit: int, keep_limit: int) -> None:
    out.size += len(part)
    if out.size > limit:
        out.error = _too_big(limit)
        return
    out.last = part
    if out.kept is not None:
        if out.size <= keep_limit:
            out.kept.append(part)
        else:
            out.kept = None


def _too_big(limit: int) -> UpstreamError:
    return UpstreamError(
        f"The upstream's reply exceeds {limit} bytes", details={"limit_bytes": limit}
    )


async def _write(
    request: web.Request,
    reply: UpstreamReply,
    headers: CIMultiDict[str],
    out: Relayed,
    part: bytes,
) -> None:
    if out.gone:
        return
    try:
        # Like nginx's send_timeout: a client that stops reading cannot hold the slot (and
        # the upstream's connection) for ever.
        async with asyncio.timeout(out.send_timeout_s):
            if out.response is None:
                # Sent before the middleware sees the response: its own headers go now, the
                # latency being the time to the reply's head.
                headers["X-Request-Id"] = request[REQUEST_ID]
                latency = time.perf_counter() - request[STARTED]
                headers["X-Latency-Ms"] = str(int(latency * 1000))
                out.response = _StreamResponse(status=reply.status, headers=headers)
                if reply.body.content_length is not None:
                    out.response.content_length = reply.body.content_length
                await out.response.prepare(request)
            if part:
                await out.response.write(part)
    except ConnectionError:
        out.gone = True
    except TimeoutError:
        out.gone = True
        if request.transport is not None:
            request.transport.abort()
