"""Pipelining of concurrent script calls: every call made in one event-loop tick leaves in one
round trip. Each caller still runs exactly its own script once; only the trip is shared."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hiredis import pack_command
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.exceptions import NoScriptError, ResponseError

from gateway.store.scripts import Script

_Call = tuple[Script, list[str], list[str | int], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Queues script calls and flushes them as one non-transactional pipeline per loop tick.

    At most `max_in_flight` pipelines are out at once; while they are, new calls gather into
    the next, bigger one, so a burst makes fewer, larger round trips instead of a queue of
    small ones each waiting for a connection.

    redis-py refuses EVALSHA inside a Cluster pipeline, so on a Cluster each call goes out on
    its own (still one round trip per call, routed by its keys' slot)."""

    def __init__(
        self,
        client: Any,
        timeout_s: float,
        *,
        pipelined: bool = True,
        max_batch: int = 512,
        max_in_flight: int = 8,
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._pipelined = pipelined
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[_Call] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()
        # On a plain Redis connection pool, each pipeline in flight owns one connection for
        # good and writes pre-packed commands on it: no pool handshake, no redis-py pipeline
        # object per batch. Other clients (memory store, Sentinel, Cluster) use pipelines.
        self._raw = _raw_capable(client)
        self._connections: list[Any] = []
        self._idle: list[Any] = []

    async def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        if not self._pipelined:
            async with asyncio.timeout(self._timeout_s):
                return await script.run(self._client, keys, args)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        else:
            self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._pending and not self._scheduled and len(self._tasks) < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or len(self._tasks) >= self._max_in_flight:
            return  # a finishing batch flushes what gathered meanwhile
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        task = asyncio.create_task(self._send(batch))
        # Keep a reference: the loop only holds weak ones to running tasks.
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._schedule()

    async def _send(self, batch: list[_Call]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._execute(batch)
                for (script, keys, args, future), reply in zip(batch, replies, strict=True):
                    if isinstance(reply, NoScriptError):
                        # A restarted server lost its script cache: EVAL sends the body once.
                        reply = await self._client.eval(script.body, len(keys), *keys, *args)
                    _resolve(future, reply)
        except Exception as exc:
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)

    async def _execute(self, batch: list[_Call]) -> list[Any]:
        if self._raw:
            return await self._execute_raw(batch)
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def _execute_raw(self, batch: list[_Call]) -> list[Any]:
        if self._idle:
            connection = self._idle.pop()
        else:
            connection = await self._client.connection_pool.get_connection()
            self._connections.append(connection)
        try:
            packed = b"".join(
                pack_command(cast(Any, ("EVALSHA", script.sha, len(keys), *keys, *args)))
                for script, keys, args, _ in batch
            )
            await connection.send_packed_command(packed, check_health=False)
            replies: list[Any] = []
            for _ in batch:
                try:
                    replies.append(await connection.read_response())
                except ResponseError as error:  # e.g. NOSCRIPT: that reply is fully read
                    replies.append(error)
        except BaseException:
            # Replies may be left unread: this connection starts afresh next time.
            await connection.disconnect(nowait=True)
            raise
        finally:
            self._idle.append(connection)
        return replies

    async def aclose(self) -> None:
        """Wait for batches already sent and queued, so that no settle is lost at shutdown."""
        while self._pending or self._tasks:
            self._flush()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        for connection in self._connections:
            await self._client.connection_pool.release(connection)
        self._connections.clear()
        self._idle.clear()


def _raw_capable(client: Any) -> bool:
    pool = getattr(client, "connection_pool", None)
    return (
        pool is not None
        and type(pool) in (ConnectionPool, BlockingConnectionPool)
        and pool.connection_class is Connection
    )


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
