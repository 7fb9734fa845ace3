"""Webhook deliveries end to end (SPEC 11): real gateways, a real redis-server, a real receiver
on loopback.

The queue is not part of this branch: a task is finished here the way the contract says the
queue's terminal transition does it (the task hash, the outbox entry with webhook_state=pending
and webhook_attempts=0, then the index with ZADD LT and a wake-up message)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from gateway.catalog.models import AsyncOptions, Catalog, WebhookOptions
from gateway.clock import system_clock, to_ms
from gateway.queue.tasks import task_view
from gateway.store import keys
from gateway.webhooks import outbox
from gateway.webhooks.targets import WebhookConnector
from tests.support.harness import Customer, Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream
from tests.unit.test_webhooks import VERIFY

FAST = WebhookOptions(attempts=3, backoff_s=(0.2, 0.4), timeout_s=1.0, allow_private_targets=True)


# --------------------------------------------------------------------------- the receiver


@dataclass
class Delivery:
    path: str
    headers: CIMultiDict[str]
    body: bytes
    at: float

    @property
    def webhook_id(self) -> str:
        return self.headers["X-Cloro-Webhook-Id"]


@dataclass
class Receiver:
    """Records every request; answers each with the next planned reply (default 200): a
    status, ("redirect", path) or ("sleep", seconds)."""

    plan: list[Any] = field(default_factory=list)
    seen: list[Delivery] = field(default_factory=list)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Delivery(request.path, CIMultiDict(request.headers), await request.read(), time.time())
        )
        reply = self.plan.pop(0) if self.plan else 200
        if isinstance(reply, tuple) and reply[0] == "redirect":
            raise web.HTTPTemporaryRedirect(reply[1])
        if isinstance(reply, tuple) and reply[0] == "sleep":
            await asyncio.sleep(reply[1])
            reply = 200
        return web.Response(status=reply, text="thanks")

    def ids(self) -> list[str]:
        return [d.webhook_id for d in self.seen]


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = await Receiver().start()
    yield server
    assert server.runner is not None
    await server.runner.cleanup()


class AcceptCounter:
    """A loopback listener that only counts the connections it accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> AcceptCounter:
        def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.accepted += 1
            writer.close()

        self.server = await asyncio.start_server(accepted, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self


@pytest.fixture
async def listener() -> AsyncIterator[AcceptCounter]:
    counter = await AcceptCounter().start()
    yield counter
    assert counter.server is not None
    counter.server.close()
    await counter.server.wait_closed()


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Any]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    await client.aclose()


# --------------------------------------------------------------------------- helpers


def with_webhooks(catalog: Catalog, options: WebhookOptions = FAST) -> Catalog:
    async_options = AsyncOptions(task_types={"CHATGPT": "/v1/monitor/chatgpt"}, webhooks=options)
    return catalog.model_copy(update={"async_": async_options})


async def webhook_gateway(
    redis_url: str, upstream: RecordingUpstream, options: WebhookOptions = FAST, **settings: Any
) -> Running:
    settings.setdefault("webhook_claim_margin_s", 0.5)
    settings.setdefault("webhook_poll_s", 0.1)
    return await start_gateway(
        redis_url, with_webhooks(catalog_for(upstream.url), options), **settings
    )


@pytest.fixture
async def gw(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await webhook_gateway(redis_url, upstream)
    yield running
    await running.close()


_tasks = iter(range(1_000_000))


async def finish_task(
    store: Any,
    c: Customer,
    url: str,
    *,
    status: str = "COMPLETED",
    due_ms: int | None = None,
    index: bool = True,
) -> str:
    """A task of `c` reaching a terminal status with a webhook, as the queue records it."""
    task_id = f"task_{next(_tasks):06d}{int(time.time() * 1000) % 100000}"
    now = to_ms(system_clock())
    due = now if due_ms is None else due_ms
    await store.hset(
        keys.task(c.account_id, task_id),
        mapping={
            "org_id": c.org_id,
            "type": "CHATGPT",
            "route": "/v1/monitor/chatgpt",
            "priority": 1,
            "price": 5,
            "charged": 5 if status == "COMPLETED" else 0,
            "created_at": now - 1500,
            "status": status,
            "payload": json.dumps({"prompt": "hi"}),
            "response": json.dumps({"success": True, "result": {"text": "hello"}}),
            "webhook_url": url,
            "webhook_state": "pending",
            "webhook_attempts": 0,
        },
    )
    await store.zadd(keys.outbox(c.account_id), {task_id: due})
    if index:
        await outbox.announce(store, c.account_id, due)
    return task_id


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.02)


async def webhook_state(store: Any, c: Customer, task_id: str) -> tuple[str, int]:
    state, made = await store.hmget(
        keys.task(c.account_id, task_id), ["webhook_state", "webhook_attempts"]
    )
    return str(state), int(made)


async def settled(store: Any, c: Customer, task_id: str, state: str) -> bool:
    return (await webhook_state(store, c, task_id))[0] == state


async def attempts_are(store: Any, c: Customer, task_id: str, made: int) -> bool:
    return (await webhook_state(store, c, task_id))[1] == made


async def outbox_empty(store: Any, c: Customer) -> bool:
    return await store.zcard(keys.outbox(c.account_id)) == 0


async def unindexed(store: Any, c: Customer) -> bool:
    return await store.zscore(keys.OUTBOX_ACCOUNTS, c.account_id) is None


async def deliveries_counted(running: Running) -> dict[str, float]:
    async with running.http.get(f"{running.admin}/metrics") as reply:
        text = await reply.text()
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "gateway_webhook_deliveries_total":
                counts[sample.labels["result"]] = sample.value
    return counts


# --------------------------------------------------------------------------- delivery


async def test_a_finished_task_is_posted_with_its_answer_and_acknowledged(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()
    task_id = await finish_task(store, c, receiver.url + "/hooks/tasks?src=gw")
    await until(lambda: settled(store, c, task_id, "delivered"))
    [delivery] = receiver.seen
    assert delivery.path == "/hooks/tasks"
    assert json.loads(delivery.body) == await task_view(store, c.account_id, task_id)
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.webhook_id == f"{task_id}-1"
    assert "X-Cloro-Signature" not in delivery.headers  # signing is opt-in
    assert "X-Cloro-Timestamp" not in delivery.headers
    assert await webhook_state(store, c, task_id) == ("delivered", 1)
    assert await store.zcard(keys.outbox(c.account_id)) == 0
    await until(lambda: unindexed(store, c))  # nothing left: the account leaves the index
    assert (await deliveries_counted(gw)).get("ok") == 1
    await asyncio.sleep(0.5)
    assert len(receiver.seen) == 1  # acknowledged: never sent again


async def test_a_wake_up_message_delivers_at_once_not_at_the_poll_interval(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    running = await webhook_gateway(redis_url, upstream, webhook_poll_s=30)
    try:
        c = await running.new_customer()
        await asyncio.sleep(0.3)  # the deliverer is asleep for its 30 s
        started = time.monotonic()
        task_id = await finish_task(store, c, receiver.url)
        await until(lambda: settled(store, c, task_id, "delivered"), timeout=3)
        assert time.monotonic() - started < 2
    finally:
        await running.close()


async def test_deliveries_go_in_completion_order(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()
    now = to_ms(system_clock())
    # Finished in the order third, first, second (their ids sort the other way).
    finished = [
        await finish_task(store, c, receiver.url, due_ms=now - 30, index=False),
        await finish_task(store, c, receiver.url, due_ms=now - 20, index=False),
        await finish_task(store, c, receiver.url, due_ms=now - 10, index=False),
    ]
    finished.reverse()
    for rank, task_id in enumerate(finished):
        await store.zadd(keys.outbox(c.account_id), {task_id: now - 30 + 10 * rank})
    await outbox.announce(store, c.account_id, now - 30)
    await until(lambda: len(receiver.seen) == 3)
    assert receiver.ids() == [f"{task_id}-1" for task_id in finished]


async def test_failed_attempts_are_retried_after_each_wait_then_given_up(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()
    receiver.plan = [500, 503, 500, 200]  # three attempts in all: the 200 is never reached
    task_id = await finish_task(store, c, receiver.url, status="FAILED")
    await until(lambda: settled(store, c, task_id, "failed"))
    assert receiver.ids() == [f"{task_id}-1", f"{task_id}-2", f"{task_id}-3"]
    first, second, third = (d.at for d in receiver.seen)
    assert second - first >= 0.2 - 0.05  # backoff_s[0]
    assert third - second >= 0.4 - 0.05  # backoff_s[1]
    assert await webhook_state(store, c, task_id) == ("failed", 3)
    assert await store.zcard(keys.outbox(c.account_id)) == 0
    assert await deliveries_counted(gw) == {"ok": 0, "retry": 2, "failed": 1}
    await asyncio.sleep(0.8)
    assert len(receiver.seen) == 3


async def test_a_redirect_a_timeout_and_a_refused_connection_are_failed_attempts(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    options = WebhookOptions(
        attempts=4, backoff_s=(0.1, 0.1, 0.1), timeout_s=0.5, allow_private_targets=True
    )
    running = await webhook_gateway(redis_url, upstream, options)
    try:
        c = await running.new_customer()
        receiver.plan = [("redirect", "/elsewhere"), ("sleep", 1.5), 204]
        task_id = await finish_task(store, c, receiver.url + "/hook")
        await until(lambda: settled(store, c, task_id, "delivered"))
        assert receiver.ids() == [f"{task_id}-1", f"{task_id}-2", f"{task_id}-3"]
        assert [d.path for d in receiver.seen] == ["/hook"] * 3  # the redirect was not followed
        assert await webhook_state(store, c, task_id) == ("delivered", 3)

        closed = receiver.url.rsplit(":", 1)[0] + ":9"  # nothing listens on port 9
        refused = await finish_task(store, c, closed + "/hook")
        await until(lambda: settled(store, c, refused, "failed"))
        assert await webhook_state(store, c, refused) == ("failed", 4)
        assert await deliveries_counted(running) == {"ok": 1, "retry": 5, "failed": 1}
    finally:
        await running.close()


async def test_a_task_gone_before_its_delivery_is_dropped(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()
    task_id = await finish_task(store, c, receiver.url, index=False)
    await store.delete(keys.task(c.account_id, task_id))  # retention ran out
    await store.zadd(keys.OUTBOX_ACCOUNTS, {c.account_id: 0}, lt=True)
    await until(lambda: outbox_empty(store, c))
    assert receiver.seen == []
    assert await store.exists(keys.task(c.account_id, task_id)) == 0


# --------------------------------------------------------------------------- signing


async def test_signed_deliveries_verify_and_follow_rotation_and_disabling(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()

    async def delivered() -> Delivery:
        task_id = await finish_task(store, c, receiver.url)
        await until(lambda: settled(store, c, task_id, "delivered"))
        return receiver.seen[-1]

    status, headers, body = await gw.call("POST", "/v1/webhooks/secret", c.key)
    assert status == 201
    first = body["secret"]
    assert first.startswith("whsec_")
    assert headers["Cache-Control"] == "no-store"
    signed = await delivered()
    assert signed.headers["X-Cloro-Signature"].startswith("v1=")
    assert abs(int(signed.headers["X-Cloro-Timestamp"]) - time.time()) < 5
    assert VERIFY(first, dict(signed.headers), signed.body)

    status, _, body = await gw.call("POST", "/v1/webhooks/secret", c.key)  # rotate
    assert status == 201
    second = body["secret"]
    assert second != first
    rotated = await delivered()
    assert VERIFY(second, dict(rotated.headers), rotated.body)
    assert not VERIFY(first, dict(rotated.headers), rotated.body)  # stopped signing at once

    status, _, _ = await gw.call("DELETE", "/v1/webhooks/secret", c.key)
    assert status == 204
    unsigned = await delivered()
    assert "X-Cloro-Signature" not in unsigned.headers
    assert "X-Cloro-Timestamp" not in unsigned.headers
    assert unsigned.webhook_id.endswith("-1")


async def test_the_header_prefix_comes_from_the_catalog(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    options = FAST.model_copy(update={"header_prefix": "X-Acme-"})
    running = await webhook_gateway(redis_url, upstream, options)
    try:
        c = await running.new_customer()
        _, _, body = await running.call("POST", "/v1/webhooks/secret", c.key)
        task_id = await finish_task(store, c, receiver.url)
        await until(lambda: settled(store, c, task_id, "delivered"))
        headers = receiver.seen[0].headers
        assert headers["X-Acme-Webhook-Id"] == f"{task_id}-1"
        timestamp, signature = headers["X-Acme-Timestamp"], headers["X-Acme-Signature"]
        renamed = {"X-Cloro-Timestamp": timestamp, "X-Cloro-Signature": signature}
        assert VERIFY(body["secret"], renamed, receiver.seen[0].body)
        assert "X-Cloro-Webhook-Id" not in headers
    finally:
        await running.close()


async def test_the_signing_settings_api(gw: Running) -> None:
    c = await gw.new_customer("slow")  # 2 requests a second
    status, headers, body = await gw.call("GET", "/v1/webhooks", c.key)
    assert (status, body) == (200, {"signing": False, "created_at": None})
    assert headers["X-RateLimit-Limit"] == "2"
    await asyncio.sleep(1.05 - time.time() % 1)  # a fresh one-second window
    status, _, body = await gw.call("POST", "/v1/webhooks/secret", c.key)
    assert status == 201
    status, _, body = await gw.call("GET", "/v1/webhooks", c.key)
    assert status == 200 and body["signing"] is True
    assert body["created_at"].endswith("Z")
    assert "secret" not in body  # shown once, never again
    status, _, body = await gw.call("GET", "/v1/webhooks", c.key)  # a third call this second
    assert status == 429 and body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    status, _, body = await gw.call("POST", "/v1/webhooks/secret", "sk_live_" + "x" * 32)
    assert status == 401 and body["error"]["code"] == "INVALID_API_KEY"
    status, _, _ = await gw.call("DELETE", "/v1/webhooks/secret")
    assert status == 401
    await asyncio.sleep(1.05 - time.time() % 1)
    status, _, _ = await gw.call("DELETE", "/v1/webhooks/secret", c.key)
    assert status == 204
    status, _, body = await gw.call("GET", "/v1/webhooks", c.key)
    assert body == {"signing": False, "created_at": None}


async def test_each_org_has_its_own_secret(gw: Running) -> None:
    one, other = await gw.new_customer(), await gw.new_customer()
    await gw.call("POST", "/v1/webhooks/secret", one.key)
    _, _, body = await gw.call("GET", "/v1/webhooks", other.key)
    assert body["signing"] is False


# --------------------------------------------------------------------------- durability


async def test_a_delivery_and_its_schedule_survive_a_gateway_restart(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    options = FAST.model_copy(update={"backoff_s": (3.0, 3.0)})
    first = await webhook_gateway(redis_url, upstream, options)
    c = await first.new_customer()
    receiver.plan = [500]
    task_id = await finish_task(store, c, receiver.url)
    await until(lambda: len(receiver.seen) == 1)
    await until(lambda: attempts_are(store, c, task_id, 1))  # the failure is recorded
    await first.close()
    # Finished while no gateway runs: kept in the store.
    waiting = await finish_task(store, c, receiver.url)
    await asyncio.sleep(0.2)
    assert len(receiver.seen) == 1
    second = await webhook_gateway(redis_url, upstream, options)
    try:
        await until(lambda: settled(store, c, waiting, "delivered"))
        await until(lambda: settled(store, c, task_id, "delivered"), timeout=5)
        assert receiver.ids() == [f"{task_id}-1", f"{waiting}-1", f"{task_id}-2"]
        assert receiver.seen[2].at - receiver.seen[0].at >= 3.0 - 0.05  # its schedule kept
    finally:
        await second.close()


async def test_a_claim_left_by_a_dead_process_is_delivered_once_its_lease_ends(
    gw: Running, receiver: Receiver, store: Any
) -> None:
    c = await gw.new_customer()
    task_id = await finish_task(store, c, receiver.url, index=False)
    # A process claimed it, maybe sent it, and died before recording the answer.
    claimed = await outbox.claim(store, c.account_id, now_ms=to_ms(system_clock()), lease_ms=800)
    assert claimed == task_id
    started = time.monotonic()
    await store.zadd(keys.OUTBOX_ACCOUNTS, {c.account_id: 0}, lt=True)
    await until(lambda: settled(store, c, task_id, "delivered"))
    assert time.monotonic() - started >= 0.6  # not before the lease ended
    assert receiver.ids() == [f"{task_id}-1"]  # the same attempt, repeated


async def test_an_outbox_missing_from_the_index_is_found_by_the_scan(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    running = await webhook_gateway(redis_url, upstream, webhook_reconcile_s=0.5)
    try:
        c = await running.new_customer()
        # The queue died between finishing the task and indexing its delivery.
        task_id = await finish_task(store, c, receiver.url, index=False)
        await until(lambda: settled(store, c, task_id, "delivered"), timeout=3)
    finally:
        await running.close()


async def test_two_gateways_deliver_each_webhook_exactly_once(
    redis_url: str, upstream: RecordingUpstream, receiver: Receiver, store: Any
) -> None:
    one = await webhook_gateway(redis_url, upstream)
    two = await webhook_gateway(redis_url, upstream)
    try:
        c = await one.new_customer()
        tasks = [await finish_task(store, c, receiver.url) for _ in range(20)]
        for task_id in tasks:
            await until(lambda t=task_id: settled(store, c, t, "delivered"))
        await asyncio.sleep(0.3)
        assert sorted(receiver.ids()) == sorted(f"{t}-1" for t in tasks)
        ok = (await deliveries_counted(one)).get("ok", 0) + (await deliveries_counted(two)).get(
            "ok", 0
        )
        assert ok == 20
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("backend", ["memory", "cluster"])
async def test_deliveries_on_the_memory_store_and_on_a_cluster(
    request: pytest.FixtureRequest, upstream: RecordingUpstream, receiver: Receiver, backend: str
) -> None:
    if backend == "memory":
        running = await webhook_gateway("memory://", upstream, webhook_poll_s=30)
    else:
        url: str = request.getfixturevalue("redis_cluster_url")
        running = await webhook_gateway(url, upstream, redis_mode="cluster", webhook_poll_s=30)
    try:
        store = running.gw.client  # the memory store lives in the gateway's process
        customers = [await running.new_customer() for _ in range(3)]  # spread over slots
        await asyncio.sleep(0.3)
        # The wake-up channel works here too (the 30 s timer would be too late).
        tasks = [(c, await finish_task(store, c, receiver.url)) for c in customers]
        for c, task_id in tasks:
            await until(lambda c=c, t=task_id: settled(store, c, t, "delivered"), timeout=3)
        assert sorted(receiver.ids()) == sorted(f"{t}-1" for _, t in tasks)
    finally:
        await running.close()


# --------------------------------------------------------------------------- SSRF


async def test_forbidden_targets_are_refused_without_a_connection(
    redis_url: str, upstream: RecordingUpstream, listener: AcceptCounter, store: Any
) -> None:
    options = WebhookOptions(attempts=2, backoff_s=(0.1,), timeout_s=1.0)  # no private targets
    running = await webhook_gateway(redis_url, upstream, options)
    try:
        c = await running.new_customer()
        port = listener.port
        urls = [
            f"http://localhost:{port}/",  # a name that resolves to loopback
            f"http://127.0.0.1:{port}/",
            f"http://[::ffff:127.0.0.1]:{port}/",
            f"http://127.1:{port}/",
        ]
        tasks = [await finish_task(store, c, url) for url in urls]
        for task_id in tasks:
            await until(lambda t=task_id: settled(store, c, t, "failed"))
            assert await webhook_state(store, c, task_id) == ("failed", 2)
        assert listener.accepted == 0
        assert await deliveries_counted(running) == {"ok": 0, "retry": 4, "failed": 4}
    finally:
        await running.close()


class RebindingResolver(AbstractResolver):
    """DNS that answers a loopback address for any name (a rebinding attack's second answer)."""

    async def resolve(self, host: str, port: int = 0, family: Any = 0) -> list[ResolveResult]:
        return [
            {
                "hostname": host,
                "host": "127.0.0.1",
                "port": port,
                "family": 2,
                "proto": 6,
                "flags": 0,
            }
        ]

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("allow_private", [False, True])
async def test_the_connect_time_check_refuses_the_address_actually_connected_to(
    listener: AcceptCounter, allow_private: bool
) -> None:
    # The resolver's own check is bypassed: only the check on the socket's address is left.
    connector = WebhookConnector(lambda: allow_private, resolver=RebindingResolver())
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"http://hooks.example.com:{listener.port}/"
        if allow_private:  # the control: the same request does connect when allowed
            with pytest.raises(aiohttp.ClientError):
                await session.post(url, data=b"{}", timeout=aiohttp.ClientTimeout(total=2))
            assert listener.accepted == 1
        else:
            with pytest.raises(aiohttp.ClientConnectorError, match="forbidden address"):
                await session.post(url, data=b"{}", timeout=aiohttp.ClientTimeout(total=2))
            assert listener.accepted == 0
