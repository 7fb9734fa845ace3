"""The happy path costs exactly two Redis round trips: admit and settle."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from tests.support.harness import Running


async def test_two_round_trips_per_metered_request(gateway: Running, redis_url: str) -> None:
    c = await gateway.new_customer()
    assert (await gateway.call("POST", "/v1/monitor/flat", c.key))[0] == 200  # warms key cache
    observer = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await observer.config_resetstat()
        n = 25
        for _ in range(n):
            assert (await gateway.call("POST", "/v1/monitor/flat", c.key))[0] == 200
        stats = await observer.info("commandstats")
    finally:
        await observer.aclose()
    calls = {name.removeprefix("cmdstat_"): value["calls"] for name, value in stats.items()}
    assert calls.pop("evalsha") == 2 * n
    calls.pop("config|resetstat", None)
    # Everything else that ran was inside the two scripts; no lookup, no eval, no extra call.
    assert "get" not in calls and "eval" not in calls and "script" not in calls
    assert set(calls) <= {
        "hmget",
        "zrangebyscore",
        "hset",
        "zcard",
        "zadd",
        "hincrby",
        "zrem",
        "hget",
        "hdel",
        "xadd",
        "expire",
        "zremrangebyscore",
    }, calls


async def test_a_server_that_lost_its_scripts_is_reloaded(gateway: Running, redis_url: str) -> None:
    c = await gateway.new_customer()
    assert (await gateway.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    observer = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        await observer.script_flush()  # what a restart without persistence does
    finally:
        await observer.aclose()
    results = await asyncio.gather(
        *(gateway.call("POST", "/v1/monitor/flat", c.key) for _ in range(5))
    )
    assert [status for status, _, _ in results] == [200] * 5
    _, _, credits = await gateway.call("GET", "/v1/credits", c.key)
    assert credits["remaining"] == 37500 - 60
