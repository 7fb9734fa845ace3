"""The customer API under abuse (SPEC 6): the account's rate window, the cap on subscription
changes, and what one usage query may cost the store."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import redis.asyncio as aioredis

from tests.support.clock import MovableClock
from tests.support.harness import Running
from tests.support.upstream import RecordingUpstream


async def next_second() -> None:
    """Sleep to the start of the next wall-clock second, so a burst falls in one window."""
    await asyncio.sleep(1 - time.time() % 1 + 0.01)


async def test_customer_calls_count_in_the_accounts_rate_window(
    gateway: Running, upstream: RecordingUpstream
) -> None:
    c = await gateway.new_customer("slow")  # 2 requests per second
    await next_second()
    calls = await asyncio.gather(*(gateway.call("GET", "/v1/credits", c.key) for _ in range(4)))
    assert sorted(status for status, _, _ in calls) == [200, 200, 429, 429]
    for status, headers, body in calls:
        assert headers["X-RateLimit-Limit"] == "2"
        if status == 429:
            assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
            assert headers["Retry-After"] == "1"
            assert headers["X-RateLimit-Remaining"] == "0"
    # Proxied requests and customer calls share the one window.
    await next_second()
    assert (await gateway.call("GET", "/v1/account", c.key))[0] == 200
    assert (await gateway.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    status, _, body = await gateway.call("POST", "/v1/monitor/flat", c.key)
    assert status == 429 and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert len(upstream.requests) == 1


async def test_every_customer_answer_carries_the_rate_limit_headers(gateway: Running) -> None:
    c = await gateway.new_customer("lite")
    answers = [
        await gateway.call("GET", "/v1/credits", c.key),
        await gateway.call("GET", "/v1/account", c.key),
        await gateway.call("GET", "/v1/plans", c.key),
        await gateway.call("GET", "/v1/account/requests", c.key),
        await gateway.call("GET", "/v1/account/billing", c.key),
        await gateway.call("GET", "/v1/account/usage?granularity=week", c.key),  # 400
        await gateway.call("POST", "/v1/account/subscription/preview", c.key, json={"plan": "x"}),
        await gateway.call("POST", "/v1/account/subscription", c.key, json={"plan": "lite"}),
        await gateway.call("POST", "/v1/account/subscription/reactivate", c.key),  # 409
    ]
    assert [status for status, _, _ in answers] == [200, 200, 200, 200, 200, 400, 400, 409, 409]
    remaining = [int(headers["X-RateLimit-Remaining"]) for _, headers, _ in answers]
    assert all(headers["X-RateLimit-Limit"] == "500" for _, headers, _ in answers)
    assert all(0 <= left < 500 for left in remaining)


async def test_subscription_changes_are_capped_per_hour(gw: Running, clock: MovableClock) -> None:
    c = await gw.new_customer("lite")
    cancel, reactivate = "/v1/account/subscription/cancel", "/v1/account/subscription/reactivate"
    for _ in range(5):  # ten changes: the default cap
        assert (await gw.call("POST", cancel, c.key))[0] == 200
        assert (await gw.call("POST", reactivate, c.key))[0] == 200
    status, headers, body = await gw.call("POST", cancel, c.key)
    assert status == 429 and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["error"]["details"] == {"limit": 10, "window_s": 3600}
    assert 3590 <= int(headers["Retry-After"]) <= 3600
    assert "X-RateLimit-Remaining" in headers
    status, _, _ = await gw.call("POST", "/v1/account/subscription", c.key, json={"plan": "hobby"})
    assert status == 429
    # Looking is not changing: previews and reads still answer.
    preview = await gw.call(
        "POST", "/v1/account/subscription/preview", c.key, json={"plan": "hobby"}
    )
    assert preview[0] == 200
    _, _, history = await gw.call("GET", "/v1/account/billing", c.key)
    assert len(history["entries"]) == 11  # ten changes and the subscription
    # Ops are not capped.
    assert (await gw.admin_call("POST", f"/admin/accounts/{c.account_id}/cancel"))[0] == 200
    # An hour later the oldest change has left the window.
    clock.jump(timedelta(hours=1))
    assert (await gw.call("POST", reactivate, c.key))[0] == 200


async def test_a_failed_change_does_not_count(gw: Running) -> None:
    c = await gw.new_customer("lite")
    for _ in range(12):  # 409: not canceling, nothing to reactivate
        assert (await gw.call("POST", "/v1/account/subscription/reactivate", c.key))[0] == 409
    for _ in range(12):  # 400: no such plan
        status, _, _ = await gw.call("POST", "/v1/account/subscription", c.key, json={"plan": "x"})
        assert status == 400
    assert (await gw.call("POST", "/v1/account/subscription/cancel", c.key))[0] == 200


async def test_an_hourly_usage_query_reads_one_key_per_day(
    gw: Running, clock: MovableClock, redis_url: str
) -> None:
    c = await gw.new_customer("lite")
    clock.jump(timedelta(minutes=30))  # mid-hour: the first request's hour is certain
    start = clock()
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    clock.jump(timedelta(hours=5))
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    clock.jump(timedelta(days=1))
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    hour = timedelta(hours=1)
    since = (start - timedelta(days=29)).isoformat().replace("+00:00", "Z")
    query = f"/v1/account/usage?granularity=hour&from={since}"
    store = aioredis.Redis.from_url(redis_url)
    try:
        before = (await store.info("commandstats")).get("cmdstat_hgetall", {}).get("calls", 0)
        status, _, usage = await gw.call("GET", query, c.key)
        after = (await store.info("commandstats"))["cmdstat_hgetall"]["calls"]
    finally:
        await store.aclose()
    assert status == 200, usage
    # 30 days and some hours: 32 day keys (and the account's own hash), not ~725 hour keys.
    assert after - before <= 40
    starts = [start, start + 5 * hour, start + 5 * hour + 24 * hour]
    assert [b["start"][:13] for b in usage["buckets"]] == [
        moment.strftime("%Y-%m-%dT%H") for moment in starts
    ]
    assert [(b["requests"], b["credits"]) for b in usage["buckets"]] == [(1, 10)] * 3
    status, _, daily = await gw.call("GET", f"/v1/account/usage?from={since}", c.key)
    assert sum(b["requests"] for b in daily["buckets"]) == 3
