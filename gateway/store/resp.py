"""One pipelined RESP connection for the hot path's scripts on a plain Redis server.

Batches are written back to back and never wait for a connection; replies are parsed by hiredis
as they arrive and handed out in order. No reader task, no per-reply coroutine: py-spy showed
redis-py's read loop as the largest store cost left once batches were pre-packed."""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from typing import Any, Protocol, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError

from gateway.protocol import ClientProtocol
from gateway.store.scripts import Script


class Waiter(Protocol):
    """Whoever waits for a reply; an error reply or a lost connection comes as an exception."""

    def resolve(self, reply: Any) -> None: ...


class RespPipe(ClientProtocol):
    """A connection whose replies go, in order, to the waiters queued with each command."""

    def __init__(self) -> None:
        super().__init__()
        self._reader = hiredis.Reader(replyError=ResponseError, encoding="utf-8")
        self._waiting: deque[Waiter] = deque()

    def write(self, packed: bytes, waiters: list[Waiter]) -> None:
        """Send packed commands; `waiters` get their replies, one each, in the same order."""
        if self.closed or self._transport is None:
            raise RedisConnectionError("the script connection is closed")
        self._waiting.extend(waiters)
        self._transport.write(packed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:  # as redis-py's pool is configured (connect.py)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        while (reply := self._reader.gets()) is not False:
            if isinstance(reply, ResponseError) and str(reply).startswith("NOSCRIPT"):
                reply = NoScriptError(str(reply))
            self._waiting.popleft().resolve(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        lost = RedisConnectionError(f"script connection lost: {exc or 'closed by the server'}")
        while self._waiting:
            self._waiting.popleft().resolve(lost)


class _Reply:
    __slots__ = ("future",)

    def __init__(self) -> None:
        self.future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

    def resolve(self, reply: Any) -> None:
        if not self.future.done():
            self.future.set_result(reply)


async def open_pipe(
    settings: dict[str, Any], timeout_s: float, scripts: tuple[Script, ...] = ()
) -> RespPipe:
    """Connect and authenticate as redis-py would with the same pool settings, and load the
    scripts: after a restart the first EVALSHA then finds them, instead of falling back to an
    EVAL on another connection, which could reach the server out of order."""
    handshake: list[tuple[str | int, ...]] = []
    if settings.get("password"):
        user = settings.get("username")
        credentials = (user, settings["password"]) if user else (settings["password"],)
        handshake.append(("AUTH", *credentials))
    if settings.get("db"):
        handshake.append(("SELECT", settings["db"]))
    handshake += [("SCRIPT", "LOAD", script.body) for script in scripts]
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(timeout_s):
        _, pipe = await loop.create_connection(
            RespPipe, settings.get("host", "localhost"), settings.get("port", 6379)
        )
        try:
            for command in handshake:
                await _call(pipe, command)
        except BaseException:
            pipe.close()
            raise
    return pipe


async def one_command(
    settings: dict[str, Any], timeout_s: float, command: tuple[str | int, ...]
) -> Any:
    """One command on a connection of its own, closed after the reply (the Cluster's slot
    map, read now and then: store/cluster_scripts.py)."""
    pipe = await open_pipe(settings, timeout_s)
    try:
        async with asyncio.timeout(timeout_s):
            return await _call(pipe, command)
    finally:
        pipe.close()


async def _call(pipe: RespPipe, command: tuple[str | int, ...]) -> Any:
    waiter = _Reply()
    pipe.write(hiredis.pack_command(cast(Any, command)), [waiter])
    if isinstance(answer := await waiter.future, Exception):
        raise answer
    return answer
