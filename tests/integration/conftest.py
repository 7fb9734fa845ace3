"""Fixtures of the boundary tests: a gateway whose clock starts 2 s before an anniversary."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.support.clock import NOW, MovableClock
from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(NOW)


@pytest.fixture
async def gw(
    redis_url: str, upstream: RecordingUpstream, clock: MovableClock
) -> AsyncIterator[Running]:
    running = await start_gateway(redis_url, catalog_for(upstream.url), clock=clock)
    yield running
    await running.close()
