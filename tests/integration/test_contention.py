"""Contention across processes' worth of gateways sharing one Redis."""

from __future__ import annotations

import asyncio
from collections import Counter

from tests.support.harness import catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


async def test_burst_through_two_instances_respects_the_org_limit(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_for(upstream.url)
    a = await start_gateway(redis_url, catalog)
    b = await start_gateway(redis_url, catalog)
    try:
        c = await a.new_customer("five")  # concurrency 5
        calls = [
            (a if i % 2 else b).call("POST", "/v1/monitor/flat?sleep=0.3", c.key) for i in range(40)
        ]
        results = await asyncio.gather(*calls)
        statuses = Counter(status for status, _, _ in results)
        codes = Counter(body["error"]["code"] for status, _, body in results if status != 200)
        assert set(statuses) <= {200, 429}
        assert set(codes) <= {"CONCURRENT_LIMIT_EXCEEDED"}
        assert upstream.max_in_flight[c.org_id] == 5
        assert statuses[200] == len(upstream.requests) >= 5
        charged = sum(int(h["X-Credits-Charged"]) for _, h, _ in results)
        assert charged == 10 * statuses[200]
        _, _, credits = await a.call("GET", "/v1/credits", c.key)
        assert credits["remaining"] == 100000 - 10 * statuses[200]
    finally:
        await a.close()
        await b.close()


async def test_credit_race_never_overspends(redis_url: str, upstream: RecordingUpstream) -> None:
    catalog = catalog_for(upstream.url)
    a = await start_gateway(redis_url, catalog)
    b = await start_gateway(redis_url, catalog)
    try:
        c = await a.new_customer("seventy")  # 70 credits: 7 requests at 10
        calls = [
            (a if i % 2 else b).call("POST", "/v1/monitor/flat?sleep=0.05", c.key)
            for i in range(30)
        ]
        results = await asyncio.gather(*calls)
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert len(ok) == 7
        assert {(s, body["error"]["code"]) for s, _, body in refused} == {
            (403, "INSUFFICIENT_CREDITS")
        }
        assert all(int(h["X-Credits-Remaining"]) >= 0 for _, h, _ in results)
        _, _, account = await a.call("GET", "/v1/account", c.key)
        assert account["credits"]["used"] == 70
        assert account["credits"]["remaining"] == 0
        assert len(upstream.requests) == 7
    finally:
        await a.close()
        await b.close()


async def test_leases_of_long_requests_are_renewed(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_for(upstream.url)
    limits = catalog.limits.model_copy(update={"lease_ttl_s": 1})
    running = await start_gateway(redis_url, catalog.model_copy(update={"limits": limits}))
    try:
        c = await running.new_customer("five")
        slow = [
            asyncio.create_task(running.call("POST", "/v1/monitor/flat?sleep=1.8", c.key))
            for _ in range(5)
        ]
        await asyncio.sleep(1.4)  # past the 1 s TTL: only renewal keeps the five leases alive
        status, _, body = await running.call("POST", "/v1/monitor/flat", c.key)
        assert status == 429 and body["error"]["code"] == "CONCURRENT_LIMIT_EXCEEDED"
        assert [r[0] for r in await asyncio.gather(*slow)] == [200] * 5
        assert running.gw.metrics.leases_reclaimed._value.get() == 0
    finally:
        await running.close()
