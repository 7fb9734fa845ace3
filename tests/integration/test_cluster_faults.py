"""The scripts' per-master connections (store/cluster_scripts.py) on a Cluster of the module's
own, which these tests change: a slot moved to another master, a master stopped and restarted.
Its nodes keep an append-only file, so a restarted master comes back with its data."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.crc import key_slot

from gateway.store.cluster_scripts import ClusterScripts
from gateway.store.scripts import Script
from tests.support.harness import catalog_for, start_gateway
from tests.support.redis_cluster import RedisCluster
from tests.support.redis_server import RedisServer
from tests.support.upstream import RecordingUpstream

COUNT = Script("count", "return redis.call('INCR', KEYS[1])")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    running = RedisCluster().start(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    yield running
    running.stop()


def _seen(server: RedisServer, command: str) -> int:
    """How many of `command` the node received, run or redirected."""
    with server.client() as node:
        stats = node.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0)) + int(stats.get("rejected_calls", 0))


async def test_a_slot_moved_to_another_master_is_followed(cluster: RedisCluster) -> None:
    key = "{acct:resharded}:n"
    slot = key_slot(key.encode())
    source = cluster.master_of(key)
    target = next(n for n in cluster.nodes if n is not source)
    client = AsyncRedisCluster.from_url(cluster.url, decode_responses=True)
    scripts = ClusterScripts(client, 2.0, scripts=(COUNT,))
    with source.client() as src, target.client() as dst:
        source_id, target_id = src.cluster("myid"), dst.cluster("myid")
        try:
            assert await scripts.run(COUNT, [key], []) == 1

            # Half way: the key has left the source, which now answers ASK for it.
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", source_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", target_id)
            src.execute_command("MIGRATE", "127.0.0.1", target.port, "", 0, 5000, "KEYS", key)
            assert await scripts.run(COUNT, [key], []) == 2
            assert _seen(target, "asking") == 1  # sent by the script pipe, not redis-py

            # Done: every master learns the slot's new owner; the source answers MOVED.
            others = [n for n in cluster.nodes if n not in (source, target)]
            for server in (target, source, *others):
                with server.client() as node:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
            assert await scripts.run(COUNT, [key], []) == 3

            # Later calls go straight to the new owner.
            seen = _seen(source, "evalsha")
            for expected in range(4, 9):
                assert await scripts.run(COUNT, [key], []) == expected
            assert _seen(source, "evalsha") == seen
            assert dst.get(key) == "8"
        finally:
            await scripts.aclose()
            await client.aclose()


async def test_a_master_restart_fails_closed_then_recovers(
    cluster: RedisCluster, upstream: RecordingUpstream
) -> None:
    gw = await start_gateway(cluster.url, catalog_for(upstream.url), redis_mode="cluster")
    try:
        c = await gw.new_customer()
        status, _, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
        assert status == 200
        master = cluster.master_of(f"{{acct:{c.account_id}}}:account")

        # A request in flight when its master goes: served, its settle spooled.
        in_flight = asyncio.create_task(gw.call("POST", "/v1/monitor/flat?sleep=0.5", c.key))
        await asyncio.sleep(0.2)
        master.halt()
        started = time.monotonic()
        status, _, body = await gw.call("POST", "/v1/monitor/flat", c.key)
        assert status == 503 and body["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert time.monotonic() - started < 0.5  # refused at once, not after the deadline
        assert (await in_flight)[0] == 200

        master.start()
        deadline = time.monotonic() + 30
        while (await gw.call("POST", "/v1/monitor/flat", c.key))[0] != 200:
            assert time.monotonic() < deadline, "no recovery after the master came back"
            await asyncio.sleep(0.2)

        # Every request the upstream served is charged once, the spooled one included.
        while True:
            _, _, account = await gw.call("GET", "/v1/account", c.key)
            if account and account["credits"]["used"] == 10 * len(upstream.requests):
                break
            assert time.monotonic() < deadline, f"charged {account}, served {upstream.requests}"
            await asyncio.sleep(0.2)
    finally:
        await gw.close()
        cluster.wait_ok()
