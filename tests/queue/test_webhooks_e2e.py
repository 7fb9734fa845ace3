"""The queue and the webhooks together: a task created through the API with a webhook is
delivered, signed, with the body GET answers; a private target is refused at creation and
nothing is queued (SPEC 10, 11)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from tests.queue.conftest import CATALOG, eventually, task_of
from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


class Receiver:
    """A webhook receiver on loopback that keeps every delivery."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/hook"
        return self

    async def _hook(self, request: web.Request) -> web.Response:
        self.got.append((dict(request.headers), await request.read()))
        return web.Response(status=204)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    running = await Receiver().start()
    yield running
    assert running.runner is not None
    await running.runner.cleanup()


async def test_a_finished_task_is_delivered_signed_with_its_get_answer(
    qgw: Running, receiver: Receiver
) -> None:
    c = await qgw.new_customer("three")
    status, _, created = await qgw.call("POST", "/v1/webhooks/secret", c.key)
    assert status == 201
    secret = created["secret"]
    status, _, body = await qgw.call(
        "POST",
        "/v1/async/task",
        c.key,
        json={"taskType": "FLAT", "payload": {"q": 1}, "webhook": {"url": receiver.url}},
    )
    assert status == 200, body
    task_id = body["task"]["id"]

    async def delivered() -> bool:
        return bool(receiver.got)

    await eventually(delivered)
    headers, raw = receiver.got[0]
    assert json.loads(raw) == await task_of(qgw, c.key, task_id)
    assert json.loads(raw)["task"]["status"] == "COMPLETED"
    assert headers["X-Cloro-Webhook-Id"] == f"{task_id}-1"
    stamp = headers["X-Cloro-Timestamp"]
    expected = hmac.new(secret.encode(), f"{stamp}.".encode() + raw, hashlib.sha256).hexdigest()
    assert headers["X-Cloro-Signature"] == f"v1={expected}"
    await asyncio.sleep(0.3)
    assert len(receiver.got) == 1  # acknowledged: never sent again


@pytest.mark.parametrize(
    "url", ["http://localhost:9/hook", "http://127.0.0.1:9/hook", "http://[::1]:9/hook"]
)
async def test_a_private_webhook_target_is_refused_at_creation(
    redis_url: str, upstream: RecordingUpstream, url: str
) -> None:
    catalog = catalog_for(upstream.url, CATALOG)
    assert catalog.async_ is not None
    strict = catalog.async_.model_copy(
        update={
            "webhooks": catalog.async_.webhooks.model_copy(update={"allow_private_targets": False})
        }
    )
    gw = await start_gateway(redis_url, catalog.model_copy(update={"async_": strict}))
    try:
        c = await gw.new_customer("three")
        item: dict[str, Any] = {"taskType": "FLAT", "payload": {}, "webhook": {"url": url}}
        status, _, body = await gw.call("POST", "/v1/async/task", c.key, json=item)
        assert status == 400 and body["error"]["details"]["field"] == "webhook.url"
        status, _, batch = await gw.call("POST", "/v1/async/task/batch", c.key, json=[item, item])
        assert status == 200
        assert [r["error"]["details"]["field"] for r in batch["results"]] == ["webhook.url"] * 2
        status, _, listed = await gw.call("GET", "/v1/async/tasks", c.key)
        assert listed["tasks"] == []
        assert upstream.requests == []
    finally:
        await gw.close()
