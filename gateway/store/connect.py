"""Build a Redis client from the process settings: memory://, standalone, Cluster or Sentinel."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff

from gateway.settings import Settings
from gateway.store.cluster import WaitingRedisCluster

# Commands get no per-command socket timeout: each store call runs under one outer deadline
# instead (asyncio.timeout in the ledger), which avoids a timer per command.
_CONNECT_TIMEOUT_S = 0.5


def is_cluster(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def connect(settings: Settings) -> Any:
    """A redis.asyncio-compatible client with decoded responses."""
    url = settings.redis_url
    if url.startswith("memory://"):
        import fakeredis  # imported lazily: only the embedded store needs it

        return fakeredis.FakeAsyncRedis(decode_responses=True)
    if settings.redis_mode == "cluster":
        # Waits for a connection rather than fail, as the standalone pool below does.
        return WaitingRedisCluster.from_url(
            url,
            decode_responses=True,
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            max_connections=settings.redis_pool_size,
        )
    if settings.redis_mode == "sentinel":
        parts = urlsplit(url)
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [(parts.hostname or "127.0.0.1", parts.port or 26379)],
            socket_connect_timeout=_CONNECT_TIMEOUT_S,
            decode_responses=True,
        )
        return sentinel.master_for(settings.redis_sentinel_master, decode_responses=True)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=settings.redis_pool_size,
        # Wait for a free connection rather than fail: the outer deadline still bounds it.
        timeout=None,
        socket_connect_timeout=_CONNECT_TIMEOUT_S,
        socket_keepalive=True,
        # After a server restart every pooled connection is stale: retry once on a fresh one
        # rather than fail the first command on each (the scripts' own connection reconnects
        # by itself, and loads the scripts again).
        retry=Retry(NoBackoff(), 1),
    )
    return aioredis.Redis.from_pool(pool)
