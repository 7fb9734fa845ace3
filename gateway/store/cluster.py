"""redis-py's Cluster client, made to wait for a connection instead of failing.

A ClusterNode's pool raises MaxConnectionsError at once when all its connections are busy
(redis-py has no blocking pool for Cluster nodes), so a burst wider than the pool answered 503
while the store was healthy. Here every command and pipeline first takes one of `pool_size`
permits, waiting for one within the caller's deadline; a holder uses at most one connection of
a node at a time, so no node's pool is ever found empty."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from functools import partial
from typing import Any, cast

from redis.asyncio.cluster import ClusterPipeline, RedisCluster

# Set while a command holds a permit: redis-py re-sends a pipeline's redirected commands
# through execute_command, which must not wait for a second permit (all holders could
# otherwise wait on each other until their deadlines).
_HOLDING: ContextVar[bool] = ContextVar("holding_a_cluster_permit", default=False)


class WaitingRedisCluster(RedisCluster):
    """At most `max_connections` commands in flight; more wait for a permit."""

    def __init__(self, max_connections: int = 64, **kwargs: Any) -> None:
        # Headroom in each node's pool: a connection that failed is closed in the background
        # and still counts until it is, while its permit is already given to the next caller.
        super().__init__(max_connections=2 * max_connections, **kwargs)
        self._permits = asyncio.Semaphore(max_connections)

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        return await self.with_permit(partial(super().execute_command, *args, **kwargs))

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> Any:
        if shard_hint:  # refused by RedisCluster.pipeline
            return super().pipeline(transaction, shard_hint)
        # As RedisCluster.pipeline builds its own; redis-py's stubs leave an attribute abstract.
        return _WaitingPipeline(self, transaction)  # type: ignore[abstract]

    async def with_permit(self, call: Callable[[], Awaitable[Any]]) -> Any:
        if _HOLDING.get():
            return await call()
        async with self._permits:
            token = _HOLDING.set(True)
            try:
                return await call()
            finally:
                _HOLDING.reset(token)


class _WaitingPipeline(ClusterPipeline):
    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> Any:
        client = cast(WaitingRedisCluster, self.cluster_client)
        return await client.with_permit(
            partial(super().execute, raise_on_error, allow_redirections)
        )
