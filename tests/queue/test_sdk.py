"""The official `cloro` SDK's async_tasks resource, unmodified, against the gateway."""

from __future__ import annotations

import asyncio

import cloro
import pytest

from tests.support.harness import Running
from tests.support.upstream import RecordingUpstream


def sdk(gw: Running, key: str) -> cloro.Cloro:
    return cloro.Cloro(api_key=key, base_url=gw.public, max_retries=0, timeout=10)


async def test_create_wait_retrieve_and_status_through_the_sdk(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("three")
    client = sdk(qgw, customer.key)
    task = await asyncio.to_thread(
        client.async_tasks.create, "CHATGPT", {"prompt": "shoes", "include": {"rawResponse": True}}
    )
    assert task.status == "QUEUED" and task.task_type == "CHATGPT" and task.priority == 1
    assert task.raw["idempotencyKey"] is None
    done = await asyncio.to_thread(client.async_tasks.wait, task, poll_interval=0.05, timeout=10)
    assert done["task"]["status"] == "COMPLETED"
    assert done["response"]["success"] is True
    # 7 + 2 (rawResponse) - 2 (sync surcharge)
    assert done["credits"] == {"creditsToCharge": 7, "creditsCharged": 7}
    assert done["task"]["startedAt"] and done["task"]["completedAt"]
    assert done["task"]["createdAt"] == task.created_at  # as creation answered it
    seen = upstream.requests[-1]
    assert seen.path_qs == "/v1/monitor/chatgpt"
    assert seen.headers["X-Request-Id"] == task.id
    assert seen.headers["X-Gateway-Org"] == customer.org_id
    status = await asyncio.to_thread(client.async_tasks.status)
    assert status == {
        "queuedTasks": 0,
        "processingTasks": 0,
        "priorityBreakdown": [],
        "concurrency": {"used": 0, "max": 3},
    }
    again = await asyncio.to_thread(client.async_tasks.retrieve, task.id)
    assert again == done


async def test_run_and_batch_through_the_sdk(qgw: Running) -> None:
    customer = await qgw.new_customer("three")
    client = sdk(qgw, customer.key)
    result = await asyncio.to_thread(
        client.async_tasks.run, "FLAT", {"q": 1}, poll_interval=0.05, timeout=10
    )
    assert result["task"]["status"] == "COMPLETED"
    assert result["credits"]["creditsCharged"] == 8
    results = await asyncio.to_thread(
        client.async_tasks.create_batch,
        [
            {"task_type": "FLAT", "payload": {"n": 1}, "priority": 5},
            {"task_type": "NOPE", "payload": {}},
            {"taskType": "CHATGPT", "payload": {"pages": 3}, "idempotency_key": "k-1"},
        ],
    )
    assert [sorted(r) for r in results] == [["credits", "task"], ["error"], ["credits", "task"]]
    assert results[1]["error"]["code"] == "VALIDATION_ERROR"
    assert results[1]["error"]["details"]["field"] == "taskType"
    assert results[2]["credits"]["creditsToCharge"] == 9  # 7 + 2 x 2 pages - 2
    assert results[2]["task"]["idempotencyKey"] == "k-1"
    with pytest.raises(cloro.TaskFailedError):
        failing = await asyncio.to_thread(client.async_tasks.create, "FLAT", {"status": 500})
        await asyncio.to_thread(client.async_tasks.wait, failing, poll_interval=0.05, timeout=10)
