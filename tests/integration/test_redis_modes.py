"""The whole gateway on a real Redis Cluster, on a Sentinel-managed primary, and on a server
that asks for a password (with a database other than 0)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import redis.asyncio as aioredis

from gateway.catalog.models import Plan
from tests.support.harness import catalog_for, start_gateway
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_sentinel import MASTER, RedisSentinel
from tests.support.redis_server import RedisServer, tls_files
from tests.support.upstream import RecordingUpstream


async def test_burst_and_billing_on_a_cluster(
    redis_cluster_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_for(upstream.url)
    a = await start_gateway(redis_cluster_url, catalog, redis_mode="cluster")
    b = await start_gateway(redis_cluster_url, catalog, redis_mode="cluster")
    try:
        customers = [await a.new_customer("five") for _ in range(3)]  # spread over slots
        calls = [
            (a if i % 2 else b).call("POST", "/v1/monitor/flat?sleep=0.3", c.key)
            for c in customers
            for i in range(12)
        ]
        results = await asyncio.gather(*calls)
        assert set(Counter(status for status, _, _ in results)) <= {200, 429}
        for c in customers:
            assert upstream.max_in_flight[c.org_id] == 5
            _, _, account = await a.call("GET", "/v1/account", c.key)
            served = sum(
                1 for seen in upstream.requests if seen.headers["X-Gateway-Org"] == c.org_id
            )
            assert account["credits"]["used"] == 10 * served
        status, _, change = await b.call(
            "POST", "/v1/account/subscription", customers[0].key, json={"plan": "hobby"}
        )
        assert status == 200 and change["change"] == "upgrade"
        _, _, history = await a.call("GET", "/v1/account/billing", customers[0].key)
        assert [e["type"] for e in history["entries"]] == ["upgrade", "subscribe"]
        async with a.http.get(a.admin + "/readyz") as reply:
            assert reply.status == 200
    finally:
        await a.close()
        await b.close()


async def test_sentinel_managed_primary_serves_requests(upstream: RecordingUpstream) -> None:
    sentinel = RedisSentinel().start()
    try:
        gw = await start_gateway(
            sentinel.url,
            catalog_for(upstream.url),
            redis_mode="sentinel",
            redis_sentinel_master=MASTER,
        )
        try:
            c = await gw.new_customer()
            status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
            assert status == 200 and headers["X-Credits-Remaining"] == "37490"
            async with gw.http.get(gw.admin + "/readyz") as reply:
                assert reply.status == 200
        finally:
            await gw.close()
    finally:
        sentinel.stop()


async def test_a_password_and_a_database_number_reach_the_pipelined_connection(
    upstream: RecordingUpstream,
) -> None:
    # The scripts travel on the gateway's own pipelined connection (store/resp.py), which
    # must authenticate and select the database as redis-py's pool does.
    server = RedisServer(password="s3cret").start()
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/2"
        gw = await start_gateway(url, catalog_for(upstream.url))
        try:
            c = await gw.new_customer()
            # The first calls find the scripts unknown and fall back to EVAL through redis-py;
            # from then on EVALSHA goes over the pipelined connection.
            for _ in range(3):
                status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
                assert status == 200 and headers["X-Credits-Charged"] == "10"
        finally:
            await gw.close()
        account = f"gw:{{acct:{c.account_id}}}:account"
        for db, used in ((2, "30"), (0, None)):  # nothing landed in database 0
            observer = aioredis.Redis.from_url(
                f"redis://:s3cret@127.0.0.1:{server.port}/{db}", decode_responses=True
            )
            try:
                assert await observer.hget(account, "used") == used
            finally:
                await observer.aclose()

        wrong = await start_gateway(
            f"redis://:wrong@127.0.0.1:{server.port}/2", catalog_for(upstream.url)
        )
        try:
            status, _, body = await wrong.call("POST", "/v1/monitor/flat", c.key)
            assert status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE"
        finally:
            await wrong.close()
    finally:
        server.stop()


async def test_a_small_pool_waits_on_a_cluster_instead_of_failing(
    redis_cluster_url: str, upstream: RecordingUpstream
) -> None:
    # 200 requests of one account at once, through 4 connections a node: a busy pool must
    # make a request wait (within the deadline), never fail it with 503.
    catalog = catalog_for(upstream.url)
    wide = Plan(price_cents=100, credits=100_000, concurrency=500, rate_limit_rps=1000)
    catalog = catalog.model_copy(update={"plans": {**catalog.plans, "wide": wide}})
    gw = await start_gateway(
        redis_cluster_url, catalog, redis_mode="cluster", redis_pool_size=4, redis_timeout_s=5
    )
    try:
        c = await gw.new_customer("wide")
        results = await asyncio.gather(
            *(gw.call("POST", "/v1/monitor/flat?sleep=0.05", c.key) for _ in range(200))
        )
        assert Counter(status for status, _, _ in results) == {200: 200}
        _, _, account = await gw.call("GET", "/v1/account", c.key)
        assert account["credits"]["used"] == 2000
    finally:
        await gw.close()


async def test_a_cluster_over_tls_serves_requests(
    upstream: RecordingUpstream, tmp_path: Path
) -> None:
    # The scripts' own pipes speak plain TCP: over TLS they go through redis-py instead.
    cluster = RedisCluster(tls=tls_files(tmp_path)).start()
    try:
        assert cluster.url.startswith("rediss://")
        gw = await start_gateway(cluster.url, catalog_for(upstream.url), redis_mode="cluster")
        try:
            c = await gw.new_customer()
            for remaining in ("37490", "37480"):
                status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
                assert status == 200 and headers["X-Credits-Remaining"] == remaining
        finally:
            await gw.close()
    finally:
        cluster.stop()
