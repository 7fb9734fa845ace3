"""Fixtures of the queue tests: a gateway on the queue catalog, and helpers to drive it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.support.harness import DATA, Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream

CATALOG = DATA / "queue_catalog.yaml"


@pytest.fixture
async def qgw(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await start_gateway(redis_url, catalog_for(upstream.url, CATALOG), queue_sweep_s=0.2)
    yield running
    await running.close()


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, interval: float = 0.02
) -> Any:
    """Poll `check` until it returns something truthy (tests may poll; the gateway does not)."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not so after {timeout} s: {result!r}")
        await asyncio.sleep(interval)


async def task_of(gw: Running, key: str, task_id: str) -> dict[str, Any]:
    status, _, body = await gw.call("GET", f"/v1/async/task/{task_id}", key)
    assert status == 200, body
    return dict(body)


async def all_done(gw: Running, key: str, ids: list[str]) -> list[dict[str, Any]] | None:
    views = [await task_of(gw, key, task_id) for task_id in ids]
    if all(v["task"]["status"] in ("COMPLETED", "FAILED") for v in views):
        return views
    return None
