"""Shared fixtures: the suite's own redis-server, a recording upstream, running gateways."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.upstream import RecordingUpstream


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_cluster_server() -> Iterator[RedisCluster]:
    cluster = RedisCluster().start()
    yield cluster
    cluster.stop()


@pytest.fixture
def redis_cluster_url(redis_cluster_server: RedisCluster) -> str:
    redis_cluster_server.flush()
    return redis_cluster_server.url


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    redis_server.flush()
    return redis_server.url


@pytest.fixture
async def upstream() -> AsyncIterator[RecordingUpstream]:
    server = await RecordingUpstream().start()
    yield server
    await server.stop()


@pytest.fixture
async def gateway(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await start_gateway(redis_url, catalog_for(upstream.url))
    yield running
    await running.close()
