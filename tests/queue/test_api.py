"""Bad input and other orgs' tasks: each gets its documented error, queues nothing, leaks
nothing (SPEC 10)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.store import keys
from tests.queue.conftest import eventually, task_of
from tests.support.harness import Customer, Running
from tests.support.upstream import RecordingUpstream

BAD_ITEMS: list[tuple[Any, str]] = [
    ({"taskType": "NOPE", "payload": {}}, "taskType"),
    ({"taskType": "chatgpt", "payload": {}}, "taskType"),
    ({"taskType": 5, "payload": {}}, "taskType"),
    ({"payload": {}}, "taskType"),
    ({"taskType": "FLAT"}, "payload"),
    ({"taskType": "FLAT", "payload": [1]}, "payload"),
    ({"taskType": "FLAT", "payload": "{}"}, "payload"),
    ({"taskType": "CHATGPT", "payload": {"pages": 11}}, "payload.pages"),
    ({"taskType": "CHATGPT", "payload": {"pages": "2"}}, "payload.pages"),
    ({"taskType": "CHATGPT", "payload": {"pages": True}}, "payload.pages"),
    ({"taskType": "FLAT", "payload": {}, "priority": 0}, "priority"),
    ({"taskType": "FLAT", "payload": {}, "priority": 11}, "priority"),
    ({"taskType": "FLAT", "payload": {}, "priority": "5"}, "priority"),
    ({"taskType": "FLAT", "payload": {}, "priority": 5.0}, "priority"),
    ({"taskType": "FLAT", "payload": {}, "priority": True}, "priority"),
    ({"taskType": "FLAT", "payload": {}, "idempotencyKey": ""}, "idempotencyKey"),
    ({"taskType": "FLAT", "payload": {}, "idempotencyKey": "k" * 256}, "idempotencyKey"),
    ({"taskType": "FLAT", "payload": {}, "idempotencyKey": "tab\there"}, "idempotencyKey"),
    ({"taskType": "FLAT", "payload": {}, "idempotencyKey": 7}, "idempotencyKey"),
    ({"taskType": "FLAT", "payload": {}, "webhook": {"url": "ftp://example.com/"}}, "webhook.url"),
    ({"taskType": "FLAT", "payload": {}, "webhook": {"url": 5}}, "webhook.url"),
    ({"taskType": "FLAT", "payload": {}, "webhook": "http://example.com/"}, "webhook.url"),
    ([1, 2], "body"),
    ("task", "body"),
]


async def nothing_queued(gw: Running, customer: Customer) -> None:
    status, _, body = await gw.call("GET", "/v1/async/status", customer.key)
    assert status == 200 and body["queuedTasks"] == 0 and body["processingTasks"] == 0
    status, _, body = await gw.call("GET", "/v1/async/tasks", customer.key)
    assert body == {"tasks": []}
    found = await gw.gw.client.keys(keys.prefix(customer.account_id) + "task:*")
    assert found == []


@pytest.mark.parametrize(("item", "field"), BAD_ITEMS, ids=[f for _, f in BAD_ITEMS])
async def test_a_bad_item_is_a_400_naming_its_field_and_queues_nothing(
    qgw: Running, upstream: RecordingUpstream, item: Any, field: str
) -> None:
    customer = await qgw.new_customer("three")
    status, _, body = await qgw.call("POST", "/v1/async/task", customer.key, json=item)
    assert status == 400, body
    assert body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] == field
    # In a batch the bad item fails alone.
    good = {"taskType": "FLAT", "payload": {"n": 1}}
    status, _, body = await qgw.call(
        "POST", "/v1/async/task/batch", customer.key, json=[good, item, good]
    )
    assert status == 200
    results = body["results"]
    assert results[1]["error"]["code"] == "VALIDATION_ERROR"
    assert results[1]["error"]["details"]["field"] == field
    assert "task" in results[0] and "task" in results[2]
    assert not any(b"NOPE" in seen.body for seen in upstream.requests)


async def test_a_payload_over_the_body_limit_is_refused(qgw: Running) -> None:
    customer = await qgw.new_customer("three")
    big = {"taskType": "FLAT", "payload": {"x": "y" * 4100}}
    status, _, body = await qgw.call("POST", "/v1/async/task", customer.key, json=big)
    assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, _, body = await qgw.call("POST", "/v1/async/task/batch", customer.key, json=[big])
    assert status == 200
    assert body["results"][0]["error"]["details"]["field"] == "payload"
    await nothing_queued(qgw, customer)


@pytest.mark.parametrize("body", [b"{}", b"[]", b"[1", b'{"taskType": "FLAT"}', b"null"], ids=str)
async def test_a_batch_that_is_not_a_non_empty_array_is_refused_whole(
    qgw: Running, body: bytes
) -> None:
    customer = await qgw.new_customer("three")
    status, _, answer = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        customer.key,
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR"
    await nothing_queued(qgw, customer)


async def test_an_oversized_batch_is_refused_whole(qgw: Running) -> None:
    customer = await qgw.new_customer("three")
    items = [{"taskType": "FLAT", "payload": {}}] * 501
    status, _, body = await qgw.call("POST", "/v1/async/task/batch", customer.key, json=items)
    assert status == 400 and body["error"]["details"] == {"field": "body", "max": 500}
    await nothing_queued(qgw, customer)


async def test_a_reused_idempotency_key_is_a_409_naming_the_task(qgw: Running) -> None:
    customer = await qgw.new_customer("three")
    item = {"taskType": "FLAT", "payload": {"n": 1}, "idempotencyKey": "order-17"}
    status, _, first = await qgw.call("POST", "/v1/async/task", customer.key, json=item)
    assert status == 200
    task_id = first["task"]["id"]
    status, _, again = await qgw.call("POST", "/v1/async/task", customer.key, json=item)
    assert status == 409 and again["error"]["code"] == "RESOURCE_ALREADY_EXISTS"
    assert again["error"]["details"]["task_id"] == task_id
    status, _, batch = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        customer.key,
        json=[{**item, "idempotencyKey": "new"}, {**item, "idempotencyKey": "new"}, item],
    )
    codes = [r.get("error", {}).get("code") for r in batch["results"]]
    assert codes == [None, "RESOURCE_ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS"]
    assert batch["results"][1]["error"]["details"]["task_id"] == batch["results"][0]["task"]["id"]
    status, _, listed = await qgw.call("GET", "/v1/async/tasks", customer.key)
    assert len(listed["tasks"]) == 2


async def enterprise_with_two_orgs(gw: Running) -> tuple[Customer, Customer]:
    contract = {
        "credits_per_cycle": 1000,
        "price_cents": 1000,
        "concurrency": 4,
        "rate_limit_rps": 100,
        "overage": False,
    }
    status, account = await gw.admin_call(
        "POST", "/admin/accounts", json={"name": "Big Co", "contract": contract}
    )
    assert status == 201, account
    status, _ = await gw.admin_call(
        "PATCH", f"/admin/orgs/{account['org_id']}", json={"concurrency": 2}
    )
    assert status == 200
    status, org = await gw.admin_call(
        "POST", f"/admin/accounts/{account['id']}/orgs", json={"name": "B", "concurrency": 2}
    )
    assert status == 201, org
    out = []
    for org_id in (account["org_id"], org["id"]):
        status, key = await gw.admin_call("POST", f"/admin/orgs/{org_id}/keys")
        out.append(Customer(account["id"], org_id, key["id"], key["key"]))
    return out[0], out[1]


async def test_other_orgs_and_accounts_see_404_and_cannot_cancel(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    owner, sibling = await enterprise_with_two_orgs(qgw)
    stranger = await qgw.new_customer("three")
    status, _, created = await qgw.call(
        "POST", "/v1/async/task", owner.key, json={"taskType": "FLAT", "payload": {"sleep": 0.3}}
    )
    task_id = created["task"]["id"]
    for key in (sibling.key, stranger.key):
        for method in ("GET", "DELETE"):
            status, _, body = await qgw.call(method, f"/v1/async/task/{task_id}", key)
            assert status == 404 and body["error"]["code"] == "RESOURCE_NOT_FOUND"
            missing = await qgw.call(method, "/v1/async/task/task_doesnotexist", key)
            assert missing[0] == 404 and missing[2]["error"]["message"] == body["error"]["message"]
        status, _, listed = await qgw.call("GET", "/v1/async/tasks", key)
        assert listed == {"tasks": []}
        status, _, queue = await qgw.call("GET", "/v1/async/status", key)
        assert queue["queuedTasks"] == 0 and queue["processingTasks"] == 0
    await eventually(lambda: _status_is(qgw, owner.key, task_id, "COMPLETED"))


async def _status_is(gw: Running, key: str, task_id: str, status: str) -> bool:
    return bool((await task_of(gw, key, task_id))["task"]["status"] == status)


async def test_cancel_of_a_running_task_is_a_409_and_it_still_completes(
    qgw: Running, upstream: RecordingUpstream
) -> None:
    customer = await qgw.new_customer("three")
    status, _, created = await qgw.call(
        "POST", "/v1/async/task", customer.key, json={"taskType": "FLAT", "payload": {"sleep": 0.3}}
    )
    task_id = created["task"]["id"]
    await eventually(lambda: _status_is(qgw, customer.key, task_id, "PROCESSING"))
    status, _, body = await qgw.call("DELETE", f"/v1/async/task/{task_id}", customer.key)
    assert status == 409 and body["error"]["code"] == "CONFLICT"
    await eventually(lambda: _status_is(qgw, customer.key, task_id, "COMPLETED"))
    status, _, body = await qgw.call("DELETE", f"/v1/async/task/{task_id}", customer.key)
    assert status == 409


async def test_refused_at_creation_by_the_account(qgw: Running) -> None:
    customer = await qgw.new_customer("three")
    status, _, body = await qgw.call(
        "POST", "/v1/async/task", customer.key, json={"taskType": "ENTERPRISE", "payload": {}}
    )
    assert status == 403 and body["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
    await qgw.gw.client.hset(keys.account(customer.account_id), "status", "canceled")
    status, _, body = await qgw.call(
        "POST", "/v1/async/task", customer.key, json={"taskType": "FLAT", "payload": {}}
    )
    assert status == 403 and body["error"]["code"] == "SUBSCRIPTION_INACTIVE"
    await nothing_queued(qgw, customer)


@pytest.mark.parametrize("query", ["limit=0", "limit=1001", "limit=x", "status=DONE"])
async def test_a_bad_listing_query_is_a_400(qgw: Running, query: str) -> None:
    customer = await qgw.new_customer("three")
    status, _, body = await qgw.call("GET", f"/v1/async/tasks?{query}", customer.key)
    assert status == 400 and body["error"]["code"] == "VALIDATION_ERROR"


async def test_listing_is_newest_first_and_filters_by_status(qgw: Running) -> None:
    customer = await qgw.new_customer("one")
    status, _, body = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        customer.key,
        json=[{"taskType": "FLAT", "payload": {"n": i, "sleep": 0.1}} for i in range(4)],
    )
    ids = [r["task"]["id"] for r in body["results"]]
    status, _, _ = await qgw.call("DELETE", f"/v1/async/task/{ids[3]}", customer.key)
    assert status == 200  # still queued behind the others: the org runs one at a time
    await eventually(lambda: _status_is(qgw, customer.key, ids[2], "COMPLETED"))
    _, _, listed = await qgw.call("GET", "/v1/async/tasks?limit=2", customer.key)
    assert [t["id"] for t in listed["tasks"]] == [ids[3], ids[2]]
    _, _, failed = await qgw.call("GET", "/v1/async/tasks?status=FAILED", customer.key)
    assert [t["id"] for t in failed["tasks"]] == [ids[3]]
    _, _, done = await qgw.call("GET", "/v1/async/tasks?status=COMPLETED", customer.key)
    assert [t["id"] for t in done["tasks"]] == [ids[2], ids[1], ids[0]]


async def test_without_an_async_block_the_api_is_404(gateway: Running) -> None:
    customer = await gateway.new_customer()
    status, _, body = await gateway.call(
        "POST", "/v1/async/task", customer.key, json={"taskType": "FLAT", "payload": {}}
    )
    assert status == 404 and body["error"]["code"] == "RESOURCE_NOT_FOUND"


async def test_a_missing_key_is_a_401_before_the_body_is_looked_at(qgw: Running) -> None:
    status, _, body = await qgw.call("POST", "/v1/async/task", None, data=b"not json")
    assert status == 401 and body["error"]["code"] == "MISSING_API_KEY"
