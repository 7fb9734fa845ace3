"""The queues in the rate window and in /metrics (SPEC 8, 10)."""

from __future__ import annotations

import asyncio
import re
import time

from tests.queue.conftest import all_done, eventually
from tests.support.harness import Running
from tests.support.upstream import RecordingUpstream


async def test_async_calls_count_in_the_rate_window_a_batch_once(qgw: Running) -> None:
    customer = await qgw.new_customer("slow")  # 3 calls a second
    await asyncio.sleep(1.02 - time.time() % 1)  # a fresh second
    items = [{"taskType": "FLAT", "payload": {"n": i}} for i in range(10)]
    status, headers, _ = await qgw.call("POST", "/v1/async/task/batch", customer.key, json=items)
    assert status == 200 and headers["X-RateLimit-Remaining"] == "2"
    status, headers, _ = await qgw.call("GET", "/v1/async/status", customer.key)
    assert status == 200 and headers["X-RateLimit-Remaining"] == "1"
    status, headers, _ = await qgw.call("GET", "/v1/async/tasks", customer.key)
    assert status == 200 and headers["X-RateLimit-Remaining"] == "0"
    status, headers, body = await qgw.call("GET", "/v1/async/status", customer.key)
    assert status == 429 and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert headers["Retry-After"] == "1"


def sample(text: str, name: str, **labels: str) -> float:
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not in /metrics")


async def scrape(gw: Running) -> str:
    async with gw.http.get(gw.admin + "/metrics") as reply:
        return await reply.text()


async def test_metrics_of_the_queues(qgw: Running, upstream: RecordingUpstream) -> None:
    customer = await qgw.new_customer("one")
    status, _, body = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        customer.key,
        json=[
            {"taskType": "FLAT", "payload": {"sleep": 0.3}},
            {"taskType": "FLAT", "payload": {"status": 500}},
            {"taskType": "FLAT", "payload": {}},
        ],
    )
    ids = [r["task"]["id"] for r in body["results"]]

    async def queued(n: int) -> bool:
        return sample(await scrape(qgw), "gateway_async_queued") == n

    await eventually(lambda: queued(2))  # one runs, two wait
    await qgw.call("DELETE", f"/v1/async/task/{ids[2]}", customer.key)
    status, _, _ = await qgw.call(
        "POST", "/v1/monitor/flat", customer.key, json={}, headers={"Prefer": "wait=5"}
    )
    assert status == 200
    await eventually(lambda: all_done(qgw, customer.key, ids))
    text = await scrape(qgw)
    created = sample(text, "gateway_async_tasks_total", task_type="FLAT", outcome="created")
    assert created == 3
    assert sample(text, "gateway_async_tasks_total", task_type="FLAT", outcome="completed") == 1
    assert sample(text, "gateway_async_tasks_total", task_type="FLAT", outcome="failed") == 1
    assert sample(text, "gateway_async_tasks_total", task_type="FLAT", outcome="canceled") == 1
    assert sample(text, "gateway_async_dispatch_seconds_count") == 2
    assert sample(text, "gateway_queue_wait_seconds_count") == 1
    assert sample(text, "gateway_async_queued") == 0
    assert re.search(r"^# TYPE gateway_async_queued gauge$", text, re.M)
