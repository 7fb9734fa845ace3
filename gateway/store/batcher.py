"""Pipelining of concurrent script calls: every call made in one event-loop tick leaves in one
round trip. Each caller still runs exactly its own script once; only the trip is shared."""

from __future__ import annotations

import asyncio
from typing import Any

from redis.exceptions import NoScriptError

from gateway.store.scripts import Script

_Call = tuple[Script, list[str], list[str | int], "asyncio.Future[Any]"]


class ScriptBatcher:
    """Queues script calls and flushes them as one non-transactional pipeline per loop tick.

    redis-py refuses EVALSHA inside a Cluster pipeline, so on a Cluster each call goes out on
    its own (still one round trip per call, routed by its keys' slot)."""

    def __init__(
        self, client: Any, timeout_s: float, *, pipelined: bool = True, max_batch: int = 256
    ) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._pipelined = pipelined
        self._max_batch = max_batch
        self._pending: list[_Call] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        if not self._pipelined:
            async with asyncio.timeout(self._timeout_s):
                return await script.run(self._client, keys, args)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            loop.call_soon(self._flush)
        self._pending.append((script, keys, args, future))
        if len(self._pending) >= self._max_batch:
            self._flush()
        return await future

    def _flush(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        task = asyncio.create_task(self._send(batch))
        # Keep a reference: the loop only holds weak ones to running tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        pipe = self._client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(script.sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    async def aclose(self) -> None:
        """Wait for batches already sent, so that no settle is lost at shutdown."""
        self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(reply, Exception):
        future.set_exception(reply)
    else:
        future.set_result(reply)
