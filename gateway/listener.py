"""The public listener's connections (SPEC 4, the edge): head and idle deadlines, and
protocol errors answered in the JSON envelope and logged without the offending bytes.

aiohttp has a keep-alive timeout but no deadline for a request's head, and its own error
path logs the raw line it could not parse (an `Authorization` header included). Its Server
is kept; it only makes a RequestHandler of ours."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.catalog.models import Limits
from gateway.errors import GatewayError, ValidationFailed

log = logging.getLogger(__name__)
# After an answer given before its body was read (a 401, say), the rest of the body is read
# and dropped for this long before the connection closes: closing at once would reset it, and
# the client could lose the answer. aiohttp's default is 10 s.
LINGER_S = 2.0
# A request body is parsed into memory only this far ahead of the handler reading it (aiohttp
# pauses the socket at twice this); its default, 64 KiB, let each of 300 unauthenticated
# uploads that arrived at once put over 200 KiB in memory before its 401 was decided.
READ_BUFFER_BYTES = 16 * 1024


class EdgeRunner(web.AppRunner):
    """An AppRunner whose connections keep the deadlines of `limits()`, read when each
    connection opens (so a reload applies to new connections)."""

    def __init__(self, app: web.Application, limits: Callable[[], Limits], **kwargs: Any):
        super().__init__(app, **kwargs)
        self._limits = limits

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _EdgeServer
        server.limits = self._limits  # type: ignore[attr-defined]
        return server


class _EdgeServer(web.Server):
    limits: Callable[[], Limits]

    def __call__(self) -> RequestHandler:
        return _EdgeHandler(self, self.limits(), loop=self._loop, **self._kwargs)


class _EdgeHandler(RequestHandler):
    """Closes a connection whose request head takes longer than `client_header_timeout_s`
    (counted from the connection's start, or from the first byte of a later request), and
    an idle one after `keepalive_timeout_s`."""

    def __init__(self, server: web.Server, limits: Limits, **kwargs: Any) -> None:
        kwargs["keepalive_timeout"] = limits.keepalive_timeout_s
        kwargs["lingering_time"] = LINGER_S
        kwargs["read_bufsize"] = READ_BUFFER_BYTES
        super().__init__(server, **kwargs)
        self._head_timeout_s = limits.client_header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._discarding = False

    def discard_rest(self) -> None:
        """The request was refused before its body was read and the connection will close:
        what else the client sends is dropped as it arrives rather than parsed and buffered
        until the linger loop gets to it (300 refused 1 MiB uploads held tens of MiB)."""
        self._discarding = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_expired)

    def data_received(self, data: bytes) -> None:
        if self._discarding:
            return
        waiting = not self._request_in_progress and not self._messages
        if waiting and data and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_expired)
        super().data_received(data)
        if self._messages and self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self._messages and not self._request_in_progress:
            self.force_close()

    def log_exception(self, *args: Any, **kwargs: Any) -> None:
        # aiohttp's text holds the raw bytes of a bad request line or header: the class of the
        # error is all that is logged.
        exc = kwargs.get("exc_info")
        log.warning(
            "bad request from a client",
            extra={"error": type(exc).__name__ if isinstance(exc, BaseException) else None},
        )

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """aiohttp's own errors (a request it could not parse) in the JSON envelope."""
        self.log_exception(exc_info=exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response was sent already")
        err = ValidationFailed("The request is not valid HTTP") if status < 500 else GatewayError()
        body = json.dumps(err.envelope(datetime.now(UTC))).encode()
        response = web.Response(
            status=status, body=body, content_type="application/json", headers=SECURITY_HEADERS
        )
        response.force_close()
        return response


def drop_unread_body(request: web.BaseRequest) -> None:
    """For a request refused before its body was read, on a connection that will close."""
    if isinstance(request.protocol, _EdgeHandler):
        request.protocol.discard_rest()


# On every response of both listeners (SPEC 4).
SECURITY_HEADERS = {"Server": "gateway", "X-Content-Type-Options": "nosniff"}


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """on_response_prepare: no server version, no content sniffing."""
    response.headers.update(SECURITY_HEADERS)
