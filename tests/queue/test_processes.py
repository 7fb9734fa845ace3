"""Tasks live in the store, not in a process (SPEC 10): a stopped gateway's queue is finished
by another; a killed gateway's task runs again after its lease expires, charged once."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.queue.conftest import CATALOG, eventually
from tests.support.harness import ADMIN_TOKEN
from tests.support.process import GatewayProcess, start_process
from tests.support.upstream import RecordingUpstream

ENV = {"GATEWAY_QUEUE_SWEEP_S": "0.3"}


def catalog_file(tmp: Path, upstream_url: str) -> Path:
    data = yaml.safe_load(CATALOG.read_text())
    data["upstreams"]["scrapers"]["url"] = upstream_url
    path = tmp / "queue.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


async def call(
    http: aiohttp.ClientSession, method: str, url: str, token: str, **kwargs: Any
) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"}
    async with http.request(method, url, headers=headers, **kwargs) as r:
        return r.status, await r.json()


async def customer(http: aiohttp.ClientSession, gw: GatewayProcess) -> tuple[str, str]:
    status, account = await call(
        http, "POST", gw.admin + "/admin/accounts", ADMIN_TOKEN, json={"name": "x", "plan": "one"}
    )
    assert status == 201, account
    status, key = await call(
        http, "POST", f"{gw.admin}/admin/orgs/{account['org_id']}/keys", ADMIN_TOKEN
    )
    return account["id"], key["key"]


async def statuses(http: aiohttp.ClientSession, base: str, key: str, ids: list[str]) -> list[Any]:
    out = []
    for task_id in ids:
        status, view = await call(http, "GET", f"{base}/v1/async/task/{task_id}", key)
        assert status == 200, view
        out.append(view)
    return out


async def test_a_stopped_gateways_queue_is_finished_by_another(
    tmp_path: Path, redis_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_file(tmp_path, upstream.url)
    first = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)
    second = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)
    try:
        async with aiohttp.ClientSession() as http:
            _, key = await customer(http, first)
            items = [{"taskType": "FLAT", "payload": {"n": i, "sleep": 0.4}} for i in range(5)]
            _, body = await call(
                http, "POST", first.public + "/v1/async/task/batch", key, json=items
            )
            ids = [r["task"]["id"] for r in body["results"]]
            first.signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait) == 0

            async def done() -> list[Any] | None:
                views = await statuses(http, second.public, key, ids)
                finished = all(v["task"]["status"] == "COMPLETED" for v in views)
                return views if finished else None

            views = await eventually(done, timeout=20)
            assert [v["credits"]["creditsCharged"] for v in views] == [8] * 5
            _status, account = await call(http, "GET", second.public + "/v1/account", key)
            assert account["credits"]["used"] == 40 and account["credits"]["held"] == 0
            seen = [s.headers["X-Request-Id"] for s in upstream.requests]
            assert sorted(seen) == sorted(ids)  # each ran once
    finally:
        first.stop()
        second.stop()


async def test_a_killed_gateways_task_runs_again_after_its_lease_and_is_charged_once(
    tmp_path: Path, redis_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_file(tmp_path, upstream.url)
    first = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)
    second: GatewayProcess | None = None
    try:
        async with aiohttp.ClientSession() as http:
            _, key = await customer(http, first)
            _, body = await call(
                http,
                "POST",
                first.public + "/v1/async/task",
                key,
                json={"taskType": "FLAT", "payload": {"sleep": 1}},
            )
            task_id = body["task"]["id"]
            await eventually(lambda: _seen(upstream, 1))
            first.process.kill()
            await asyncio.to_thread(first.wait)
            second = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)

            async def completed() -> Any:
                [view] = await statuses(http, second.public, key, [task_id])
                return view if view["task"]["status"] == "COMPLETED" else None

            view = await eventually(completed, timeout=20)
            assert view["credits"] == {"creditsToCharge": 8, "creditsCharged": 8}
            runs = [s for s in upstream.requests if s.headers["X-Request-Id"] == task_id]
            assert len(runs) == 2
            _status, account = await call(http, "GET", second.public + "/v1/account", key)
            assert account["credits"]["used"] == 8 and account["credits"]["held"] == 0
    finally:
        first.stop()
        if second is not None:
            second.stop()


async def _seen(upstream: RecordingUpstream, n: int) -> bool:
    return len(upstream.requests) >= n


async def test_a_task_still_running_when_the_drain_ends_goes_back_to_the_queue(
    tmp_path: Path, redis_url: str, upstream: RecordingUpstream
) -> None:
    catalog = catalog_file(tmp_path, upstream.url)  # shutdown_grace_s: 2
    first = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)
    second = await asyncio.to_thread(start_process, catalog, redis_url, tmp_path, env=ENV)
    try:
        async with aiohttp.ClientSession() as http:
            _, key = await customer(http, first)
            _, body = await call(
                http,
                "POST",
                first.public + "/v1/async/task",
                key,
                json={"taskType": "FLAT", "payload": {"sleep": 3}},
            )
            task_id = body["task"]["id"]
            await eventually(lambda: _seen(upstream, 1))
            first.signal(signal.SIGTERM)
            assert await asyncio.to_thread(first.wait) == 0

            async def completed() -> Any:
                [view] = await statuses(http, second.public, key, [task_id])
                return view if view["task"]["status"] == "COMPLETED" else None

            view = await eventually(completed, timeout=20)
            assert view["credits"]["creditsCharged"] == 8
            assert len(upstream.requests) == 2  # cut off by the drain, then run again
            _status, account = await call(http, "GET", second.public + "/v1/account", key)
            assert account["credits"]["used"] == 8 and account["credits"]["held"] == 0
    finally:
        first.stop()
        second.stop()
