"""The queues on the suite's Redis Cluster: tasks and a waiter woken by another gateway."""

from __future__ import annotations

import asyncio
import time

from tests.queue.conftest import CATALOG, all_done, eventually
from tests.support.harness import catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


async def test_tasks_and_waiters_across_two_gateways_on_a_cluster(
    redis_cluster_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_for(upstream.url, CATALOG)
    a = await start_gateway(redis_cluster_url, catalog, redis_mode="cluster", queue_sweep_s=0.5)
    b = await start_gateway(redis_cluster_url, catalog, redis_mode="cluster", queue_sweep_s=0.5)
    try:
        await asyncio.wait_for(b.gw.dispatcher.listening.wait(), 5)
        customers = [await a.new_customer("one") for _ in range(3)]  # spread over slots
        batches = []
        for c in customers:
            status, _, body = await a.call(
                "POST",
                "/v1/async/task/batch",
                c.key,
                json=[{"taskType": "FLAT", "payload": {"n": i, "sleep": 0.1}} for i in range(4)],
            )
            assert status == 200, body
            batches.append([r["task"]["id"] for r in body["results"]])
        # A sync request on the other gateway waits its turn; a's dispatch wakes it at once
        # (through pub/sub: without it the wait would last all 5 s).
        started = time.monotonic()
        status, headers, _ = await b.call(
            "POST", "/v1/monitor/flat", customers[0].key, json={}, headers={"Prefer": "wait=5"}
        )
        assert status == 200 and headers["Preference-Applied"] == "wait=5"
        assert time.monotonic() - started < 2
        for c, ids in zip(customers, batches, strict=True):
            views = await eventually(lambda c=c, ids=ids: all_done(a, c.key, ids), timeout=15)
            assert [v["credits"]["creditsCharged"] for v in views] == [8] * 4
            assert upstream.max_in_flight[c.org_id] == 1
    finally:
        await a.close()
        await b.close()
