"""What the gateway's two hand-written client connections share (upstream HTTP, Redis
scripts): the transport, whether it is closed, and closing it gently or at once."""

from __future__ import annotations

import asyncio
from typing import cast


class ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def close(self) -> None:
        """Close after what is already written has gone out."""
        self.closed = True
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection now, unsent bytes and all: the peer sees the caller give up."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()
