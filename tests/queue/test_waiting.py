"""Sync requests waiting for a slot (SPEC 10): Prefer: wait=N or a plan's queue_wait_s."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from gateway.store import keys
from tests.queue.conftest import CATALOG, eventually
from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


def waiting(seconds: int) -> dict[str, str]:
    return {"Prefer": f"wait={seconds}"}


async def test_a_waiter_gets_the_slot_when_it_frees(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=0.5", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    started = time.monotonic()
    status, headers, _ = await qgw.call(
        "POST", "/v1/monitor/flat", customer.key, json={}, headers=waiting(5)
    )
    assert status == 200
    assert headers["Preference-Applied"] == "wait=5"
    assert 0.2 < time.monotonic() - started < 2
    assert (await blocker)[0] == 200
    assert "Preference-Applied" not in (await blocker)[1]
    assert upstream.max_in_flight[customer.org_id] == 1


async def _in_flight(upstream: RecordingUpstream, org: str) -> bool:
    return upstream.in_flight[org] > 0


async def test_no_slot_in_time_is_a_429_at_the_deadline(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=2", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    started = time.monotonic()
    status, headers, body = await qgw.call(
        "POST", "/v1/monitor/flat", customer.key, json={}, headers=waiting(1)
    )
    assert status == 429 and body["error"]["code"] == "CONCURRENT_LIMIT_EXCEEDED"
    assert headers["Preference-Applied"] == "wait=1"
    assert 0.9 < time.monotonic() - started < 1.6
    await blocker
    # Nothing of the waiter is left in the store.
    a = customer.account_id
    assert await qgw.gw.client.zcard(keys.waiting(a, customer.org_id)) == 0
    assert await qgw.gw.client.hlen(keys.waiters(a)) == 0
    assert await qgw.gw.client.hget(keys.account(a), f"q:{customer.org_id}") == "0"


async def test_the_wait_is_capped_and_a_plan_may_wait_by_itself(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    patient = await qgw.new_customer("patient")  # queue_wait_s: 5
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=0.3", patient.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, patient.org_id))
    status, headers, _ = await qgw.call("POST", "/v1/monitor/flat", patient.key, json={})
    assert status == 200 and headers["Preference-Applied"] == "wait=5"
    await blocker
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=0.3", patient.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, patient.org_id))
    status, headers, _ = await qgw.call(
        "POST", "/v1/monitor/flat", patient.key, json={}, headers=waiting(3600)
    )
    assert status == 200 and headers["Preference-Applied"] == "wait=10"  # max_queue_wait_s
    await blocker


async def test_at_most_max_waiting_per_org_wait_and_one_more_is_refused_at_once(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=1", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    waiters = [
        asyncio.create_task(
            qgw.call(
                "POST", "/v1/monitor/flat?sleep=0.05", customer.key, json={}, headers=waiting(8)
            )
        )
        for _ in range(5)
    ]
    key = keys.waiting(customer.account_id, customer.org_id)
    await eventually(lambda: _count(qgw, key, 5))
    started = time.monotonic()
    status, headers, body = await qgw.call(
        "POST", "/v1/monitor/flat", customer.key, json={}, headers=waiting(8)
    )
    assert status == 429 and body["error"]["code"] == "CONCURRENT_LIMIT_EXCEEDED"
    assert time.monotonic() - started < 0.5
    assert headers["Preference-Applied"] == "wait=8"
    assert [r[0] for r in await asyncio.gather(*waiters)] == [200] * 5
    await blocker
    assert upstream.max_in_flight[customer.org_id] == 1


async def _count(gw: Running, key: str, n: int) -> bool:
    return bool(await gw.gw.client.zcard(key) == n)


async def test_waiters_go_before_queued_tasks(qgw: Running, upstream: RecordingUpstream) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=0.4&n=blocker", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    status, _, body = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        customer.key,
        json=[{"taskType": "FLAT", "payload": {"n": i}, "priority": 10} for i in range(3)],
    )
    assert status == 200
    status, _, _ = await qgw.call(
        "POST", "/v1/monitor/flat?n=waiter", customer.key, json={}, headers=waiting(5)
    )
    assert status == 200
    await blocker
    ids = [r["task"]["id"] for r in body["results"]]
    await eventually(lambda: _all_seen(upstream, ids))
    paths = [seen.path_qs for seen in upstream.requests]
    assert paths[:2] == ["/v1/monitor/flat?sleep=0.4&n=blocker", "/v1/monitor/flat?n=waiter"]


async def _all_seen(upstream: RecordingUpstream, ids: list[str]) -> bool:
    return set(ids) <= {seen.headers.get("X-Request-Id") for seen in upstream.requests}


@pytest.fixture
async def second(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await start_gateway(redis_url, catalog_for(upstream.url, CATALOG), queue_sweep_s=5)
    await running.gw.dispatcher.listening.wait()
    yield running
    await running.close()


async def test_first_come_first_served_across_two_gateways(
    qgw: Running, second: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=0.5&n=blocker", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    key = keys.waiting(customer.account_id, customer.org_id)
    waiters = []
    for i in range(5):  # max_waiting_per_org
        gw = (qgw, second)[i % 2]
        waiters.append(
            asyncio.create_task(
                gw.call(
                    "POST",
                    f"/v1/monitor/flat?sleep=0.05&n={i}",
                    customer.key,
                    json={},
                    headers=waiting(8),
                )
            )
        )
        await eventually(lambda i=i, gw=gw: _count(gw, key, i + 1), timeout=3)
    assert [r[0] for r in await asyncio.gather(*waiters)] == [200] * 5
    await blocker
    order = [seen.path_qs.rsplit("=", 1)[1] for seen in upstream.requests]
    assert order == ["blocker", "0", "1", "2", "3", "4"]
    assert upstream.max_in_flight[customer.org_id] == 1


async def test_a_waiter_whose_client_hangs_up_leaves_at_once_and_never_reaches_the_upstream(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = asyncio.create_task(
        qgw.call("POST", "/v1/monitor/flat?sleep=1&n=blocker", customer.key, json={})
    )
    await eventually(lambda: _in_flight(upstream, customer.org_id))
    key = keys.waiting(customer.account_id, customer.org_id)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await session.post(
                qgw.public + "/v1/monitor/flat?n=gone",
                json={},
                headers={"Authorization": f"Bearer {customer.key}", **waiting(8)},
                timeout=aiohttp.ClientTimeout(total=0.3),
            )
    hung_up = time.monotonic()
    await eventually(lambda: _count(qgw, key, 0), interval=0.01)
    assert time.monotonic() - hung_up < 0.3
    await blocker
    await asyncio.sleep(0.3)
    assert [seen.path_qs for seen in upstream.requests] == ["/v1/monitor/flat?sleep=1&n=blocker"]
    _status, _, body = await qgw.call("GET", "/v1/account", customer.key)
    assert body["credits"]["held"] == 0 and body["concurrency"]["current"] == 0
