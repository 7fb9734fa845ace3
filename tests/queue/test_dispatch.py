"""Dispatch: an org never has more in flight than its limit, sync and async together; order
within an org; orgs independent; what a task is charged."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from tests.queue.conftest import all_done, eventually, task_of
from tests.support.harness import Customer, Running
from tests.support.upstream import RecordingUpstream


async def create_batch(gw: Running, key: str, items: list[dict[str, Any]]) -> list[str]:
    status, _, body = await gw.call("POST", "/v1/async/task/batch", key, json=items)
    assert status == 200, body
    return [r["task"]["id"] for r in body["results"]]


async def credits(gw: Running, customer: Customer) -> dict[str, Any]:
    status, _, body = await gw.call("GET", "/v1/account", customer.key)
    assert status == 200, body
    return dict(body["credits"])


def order_seen(upstream: RecordingUpstream, org: str) -> list[Any]:
    return [
        json.loads(seen.body).get("n")
        for seen in upstream.requests
        if seen.headers.get("X-Gateway-Org") == org
    ]


async def test_a_batch_never_pushes_an_org_past_its_limit_even_with_sync_requests(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("three")
    ids = await create_batch(
        qgw,
        customer.key,
        [{"taskType": "FLAT", "payload": {"n": i, "sleep": 0.15}} for i in range(30)],
    )
    assert len(ids) == 30
    sync: list[int] = []
    for _ in range(20):  # sync requests meanwhile: admitted only into a free slot
        status, _, _ = await qgw.call("POST", "/v1/monitor/flat?sleep=0.05", customer.key, json={})
        sync.append(status)
        await asyncio.sleep(0.02)
    views = await eventually(lambda: all_done(qgw, customer.key, ids), timeout=30)
    assert [v["task"]["status"] for v in views] == ["COMPLETED"] * 30
    assert upstream.max_in_flight[customer.org_id] == 3
    assert set(sync) <= {200, 429} and 429 in sync
    used = (await credits(qgw, customer))["used"]
    assert used == 30 * 8 + sync.count(200) * 10


async def test_priority_first_then_first_in_first_out(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    blocker = await create_batch(
        qgw, customer.key, [{"taskType": "FLAT", "payload": {"n": "blocker", "sleep": 0.4}}]
    )
    await eventually(lambda: _status_is(qgw, customer.key, blocker[0], "PROCESSING"))
    priorities = [1, 5, 1, 10, 5, 3, 10, 1]
    ids = await create_batch(
        qgw,
        customer.key,
        [
            {"taskType": "FLAT", "payload": {"n": i}, "priority": p}
            for i, p in enumerate(priorities)
        ],
    )
    await eventually(lambda: all_done(qgw, customer.key, [*blocker, *ids]), timeout=20)
    expected = sorted(range(len(priorities)), key=lambda i: (-priorities[i], i))
    assert order_seen(upstream, customer.org_id) == ["blocker", *expected]


async def _status_is(gw: Running, key: str, task_id: str, status: str) -> bool:
    return bool((await task_of(gw, key, task_id))["task"]["status"] == status)


async def test_one_orgs_backlog_never_delays_another_orgs_task(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    busy = await qgw.new_customer("three")
    other = await qgw.new_customer("three")
    backlog = await create_batch(
        qgw, busy.key, [{"taskType": "FLAT", "payload": {"n": i, "sleep": 0.2}} for i in range(50)]
    )
    started = time.monotonic()
    single = await create_batch(qgw, other.key, [{"taskType": "FLAT", "payload": {"n": "x"}}])
    await eventually(lambda: all_done(qgw, other.key, single), interval=0.01)
    assert time.monotonic() - started < 1.0  # the backlog needs about 3.4 s
    queued = await _queued(qgw, busy.key)
    assert queued > 30  # still mostly waiting
    await eventually(lambda: all_done(qgw, busy.key, backlog), timeout=30)


async def _queued(gw: Running, key: str) -> int:
    status, _, body = await gw.call("GET", "/v1/async/status", key)
    assert status == 200, body
    return int(body["queuedTasks"])


async def test_charged_once_on_success_and_nothing_on_failure_or_cancel(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("one")
    before = await credits(qgw, customer)
    ids = await create_batch(
        qgw,
        customer.key,
        [
            {"taskType": "FLAT", "payload": {"n": "ok", "sleep": 0.3}},
            {"taskType": "FLAT", "payload": {"n": "500", "status": 500}},
            {"taskType": "FLAT", "payload": {"n": "cancel"}},
            {"taskType": "CHATGPT", "payload": {"n": "502", "status": 502}},
        ],
    )
    status, _, canceled = await qgw.call("DELETE", f"/v1/async/task/{ids[2]}", customer.key)
    assert status == 200, canceled
    assert canceled["task"]["status"] == "FAILED"
    assert canceled["response"] == {
        "error": {"code": "CANCELED", "message": "The task was canceled"}
    }
    views = await eventually(lambda: all_done(qgw, customer.key, ids), timeout=10)
    assert [v["task"]["status"] for v in views] == ["COMPLETED", "FAILED", "FAILED", "FAILED"]
    assert [v["credits"]["creditsCharged"] for v in views] == [8, 0, 0, 0]
    assert views[1]["response"]["error"]["code"] == "UPSTREAM_ERROR"
    assert views[1]["response"]["error"]["status"] == 500
    after = await credits(qgw, customer)
    assert after["used"] - before["used"] == 8 and after["held"] == 0
    assert "cancel" not in order_seen(upstream, customer.org_id)
    # Tasks show in recent requests like sync calls of their route.
    status, _, recent = await qgw.call("GET", "/v1/account/requests", customer.key)
    logged = {r["id"]: (r["route"], r["credits"]) for r in recent["requests"]}
    assert logged[ids[0]] == ("/v1/monitor/flat", 8)
    assert logged[ids[3]] == ("/v1/monitor/chatgpt", 0)
    assert ids[2] not in logged


async def test_a_batch_that_outruns_the_credits_never_takes_the_balance_below_zero(
    qgw: Running,
) -> None:
    customer = await qgw.new_customer("tiny")  # 20 credits; a FLAT task costs 8
    ids = await create_batch(
        qgw, customer.key, [{"taskType": "FLAT", "payload": {"n": i}} for i in range(6)]
    )
    assert len(ids) == 6  # each fits what was available when it was created
    views = await eventually(lambda: all_done(qgw, customer.key, ids), timeout=10)
    charged = [v["credits"]["creditsCharged"] for v in views]
    assert sorted(charged) == [0, 0, 0, 0, 8, 8]
    refusals = [v["response"]["error"]["code"] for v in views if v["task"]["status"] == "FAILED"]
    assert refusals == ["INSUFFICIENT_CREDITS"] * 4
    status, _, balance = await qgw.call("GET", "/v1/credits", customer.key)
    assert balance["remaining"] == 4
    # Creation itself is refused once the balance is below the task's price.
    status, _, body = await qgw.call(
        "POST", "/v1/async/task", customer.key, json={"taskType": "FLAT", "payload": {}}
    )
    assert status == 403 and body["error"]["code"] == "INSUFFICIENT_CREDITS"
    assert body["error"]["details"] == {"required": 8, "remaining": 4}
