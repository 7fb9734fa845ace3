"""Operations: metrics, reload, workers, drain and logs, on real processes and a real Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import ADMIN_TOKEN, Running, catalog_for, start_gateway
from tests.support.process import set_price, start_process, write_catalog
from tests.support.redis_server import free_port
from tests.support.upstream import RecordingUpstream

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def samples(text: str, name: str) -> Counter[tuple[tuple[str, str], ...]]:
    found: Counter[tuple[tuple[str, str], ...]] = Counter()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] += sample.value
    return found


async def metrics_text(http: aiohttp.ClientSession, admin: str) -> str:
    async with http.get(f"{admin}/metrics") as reply:
        assert reply.status == 200
        return await reply.text()


async def admin_post(http: aiohttp.ClientSession, admin: str, path: str, body: Any = None) -> Any:
    async with http.post(f"{admin}{path}", json=body, headers=AUTH) as reply:
        return reply.status, await reply.json()


async def new_key(http: aiohttp.ClientSession, admin: str, plan: str = "lite") -> str:
    status, account = await admin_post(http, admin, "/admin/accounts", {"name": "t", "plan": plan})
    assert status == 201, account
    status, key = await admin_post(http, admin, f"/admin/orgs/{account['org_id']}/keys")
    return str(key["key"])


# ------------------------------------------------------------------------------- metrics


async def test_request_counts_move_by_exactly_the_requests_made(
    gateway: Running, upstream: RecordingUpstream, redis_url: str
) -> None:
    lite = await gateway.new_customer("lite")
    slow = await gateway.new_customer("slow")  # 2 requests per second
    tiny = await gateway.new_customer("seventy")
    before = samples(await metrics_text(gateway.http, gateway.admin), "gateway_requests_total")
    flat = "/v1/monitor/flat"
    made = [
        ("POST", flat, lite.key, {}),  # charged
        ("POST", flat, lite.key, {}),  # charged
        ("GET", "/v1/countries", lite.key, {}),  # free
        ("POST", flat, None, {}),  # rejected_auth (missing)
        ("POST", flat, "sk_live_" + "x" * 32, {}),  # rejected_auth (unknown)
        ("POST", "/v1/enterprise/batch", lite.key, {}),  # rejected_permission
        ("POST", f"{flat}?status=500", lite.key, {}),  # upstream_error
        ("POST", f"{flat}?sleep=3", lite.key, {}),  # upstream_timeout (2 s limit)
        ("POST", "/v1/monitor/chatgpt", lite.key, {"data": b"[]"}),  # rejected_input
        ("GET", "/nowhere", lite.key, {}),  # rejected_input
    ]
    for method, path, key, options in made:
        await gateway.call(method, path, key, **options)
    for _ in range(8):
        await gateway.call("POST", flat, tiny.key)  # 7 charged, 1 rejected_credits
    rate = [await gateway.call("GET", "/v1/countries", slow.key) for _ in range(3)]
    after = samples(await metrics_text(gateway.http, gateway.admin), "gateway_requests_total")
    moved = Counter({labels: after[labels] - before[labels] for labels in after}) + Counter()
    by_outcome: Counter[str] = Counter()
    for labels, count in moved.items():
        by_outcome[dict(labels)["outcome"]] += int(count)
    rate_limited = sum(1 for status, _, _ in rate if status == 429)
    assert (
        by_outcome
        == Counter(
            {
                "charged": 9,
                "free": 4 - rate_limited,
                "rejected_auth": 2,
                "rejected_permission": 1,
                "upstream_error": 1,
                "upstream_timeout": 1,
                "rejected_input": 2,
                "rejected_credits": 1,
                "rejected_rate": rate_limited,
            }
        )
        + Counter()
    )
    assert rate_limited >= 1
    key = (("code", "200"), ("outcome", "charged"), ("route", flat))
    assert moved[key] == 9
    text = await metrics_text(gateway.http, gateway.admin)
    charged = samples(text, "gateway_credits_charged_total")
    assert charged[(("route", flat),)] == 90
    assert samples(text, "gateway_request_duration_seconds_count")[(("route", flat),)] >= 9


async def test_concurrency_and_unavailable_outcomes(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    gw = await start_gateway(redis_url, catalog_for(upstream.url))
    try:
        c = await gw.new_customer("five")
        results = await asyncio.gather(
            *(gw.call("POST", "/v1/monitor/flat?sleep=0.3", c.key) for _ in range(8))
        )
        refused = sum(1 for status, _, _ in results if status == 429)
        text = await metrics_text(gw.http, gw.admin)
        counts = samples(text, "gateway_requests_total")
        key = (("code", "429"), ("outcome", "rejected_concurrency"), ("route", "/v1/monitor/flat"))
        assert counts[key] == refused == 3
    finally:
        await gw.close()
    dead = await start_gateway(f"redis://127.0.0.1:{free_port()}/0", catalog_for(upstream.url))
    try:
        await dead.call("POST", "/v1/monitor/flat", "sk_live_" + "u" * 32)
        counts = samples(await metrics_text(dead.http, dead.admin), "gateway_requests_total")
        assert (
            counts[(("code", "503"), ("outcome", "unavailable"), ("route", "/v1/monitor/flat"))]
            == 1
        )
    finally:
        await dead.close()


async def test_per_org_metrics_only_when_asked(redis_url: str, upstream: RecordingUpstream) -> None:
    catalog = catalog_for(upstream.url)
    for per_org in (False, True):
        options = catalog.metrics.model_copy(update={"per_org": per_org})
        gw = await start_gateway(redis_url, catalog.model_copy(update={"metrics": options}))
        try:
            c = await gw.new_customer()
            await gw.call("POST", "/v1/monitor/flat", c.key)
            text = await metrics_text(gw.http, gw.admin)
            series = samples(text, "gateway_org_requests_total")
            if per_org:
                assert series == Counter({(("org", c.org_id), ("outcome", "charged")): 1})
                assert samples(text, "gateway_org_credits_charged_total") == Counter(
                    {(("org", c.org_id),): 10}
                )
            else:
                assert series == Counter()
        finally:
            await gw.close()


# -------------------------------------------------------------------------------- reload


@pytest.fixture
async def served(
    tmp_path: Path, redis_url: str, upstream: RecordingUpstream
) -> AsyncIterator[tuple[Running, Path]]:
    path = write_catalog(tmp_path / "catalog.yaml", upstream.url)
    running = await start_gateway(redis_url, catalog_for(upstream.url, path), config=str(path))
    yield running, path
    await running.close()


async def test_reload_applies_a_price_to_the_next_request(served: tuple[Running, Path]) -> None:
    gw, path = served
    c = await gw.new_customer()
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "10"
    set_price(path, "/v1/monitor/flat", 13)
    status, body = await gw.admin_call("POST", "/admin/reload")
    assert status == 200 and body["version"] == gw.gw.catalog.current.version
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "13"
    text = await metrics_text(gw.http, gw.admin)
    assert samples(text, "gateway_config_reloads_total")[(("result", "ok"),)] == 1


async def test_a_bad_catalog_changes_nothing(served: tuple[Running, Path]) -> None:
    gw, path = served
    c = await gw.new_customer()
    version = gw.gw.catalog.current.version
    path.write_text(path.read_text().replace("upstream: scrapers", "upstream: nowhere", 1))
    status, body = await gw.admin_call("POST", "/admin/reload")
    assert status == 422 and body["error"]["code"] == "CONFIG_INVALID"
    assert any("unknown upstream" in p for p in body["error"]["details"]["problems"])
    assert gw.gw.catalog.current.version == version
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "10"
    text = await metrics_text(gw.http, gw.admin)
    assert samples(text, "gateway_config_reloads_total")[(("result", "error"),)] == 1


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"upstreams": {}, "routes": [], "plans": {}}, id="empty"),
        pytest.param({"routes": []}, id="no routes"),
        pytest.param(
            {"upstreams": {"scrapers": {"url": "http://127.0.0.1:9", "timeout_s": float("inf")}}},
            id="infinite timeout",
        ),
    ],
)
async def test_a_catalog_that_would_break_every_request_is_refused(
    served: tuple[Running, Path], upstream: RecordingUpstream, changes: dict[str, Any]
) -> None:
    gw, path = served
    c = await gw.new_customer()
    write_catalog(path, upstream.url, **changes)
    status, body = await gw.admin_call("POST", "/admin/reload")
    assert status == 422 and body["error"]["code"] == "CONFIG_INVALID", body
    headers = {"Idempotency-Key": "k-1"}
    status, _, _ = await gw.call("POST", "/v1/monitor/flat", c.key, headers=headers)
    assert status == 200


async def test_reloads_under_load_fail_no_request(
    served: tuple[Running, Path], upstream: RecordingUpstream
) -> None:
    gw, path = served
    c = await gw.new_customer("hobby")
    stop = asyncio.Event()
    statuses: Counter[int] = Counter()

    async def client() -> None:
        while not stop.is_set():
            status, _, _ = await gw.call("POST", "/v1/monitor/flat?sleep=0.02", c.key)
            statuses[status] += 1

    clients = [asyncio.create_task(client()) for _ in range(8)]
    for price in range(11, 21):  # 10 reloads, each with a new price
        set_price(path, "/v1/monitor/flat", price)
        assert (await gw.admin_call("POST", "/admin/reload"))[0] == 200
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*clients)
    assert set(statuses) == {200} and statuses[200] > 50
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "20"


# ----------------------------------------------------------------- processes and signals


@pytest.fixture
def catalog_file(tmp_path: Path, upstream: RecordingUpstream) -> Path:
    return write_catalog(tmp_path / "catalog.yaml", upstream.url)


async def test_sighup_reloads_and_a_bad_file_is_logged_and_counted(
    catalog_file: Path, redis_url: str, tmp_path: Path
) -> None:
    proc = start_process(catalog_file, redis_url, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            key = await new_key(http, proc.admin)
            headers = {"Authorization": f"Bearer {key}"}

            async def charged() -> str:
                async with http.post(f"{proc.public}/v1/monitor/flat", headers=headers) as r:
                    return r.headers["X-Credits-Charged"]

            assert await charged() == "10"
            good = catalog_file.read_text()
            catalog_file.write_text("routes: [unclosed\n")
            proc.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await charged() == "10"
            catalog_file.write_text(good)
            set_price(catalog_file, "/v1/monitor/flat", 4)
            proc.signal(signal.SIGHUP)
            await asyncio.sleep(0.5)
            assert await charged() == "4"
            text = await metrics_text(http, proc.admin)
            reloads = samples(text, "gateway_config_reloads_total")
            assert reloads[(("result", "error"),)] == 1 and reloads[(("result", "ok"),)] == 1
    finally:
        proc.stop()
    assert "catalog reload rejected" in proc.log()


def child_pids(parent: int) -> list[int]:
    out = subprocess.run(
        ["ps", "-o", "pid=", "--ppid", str(parent)], capture_output=True, text=True, check=False
    ).stdout
    return [int(pid) for pid in out.split()]


async def wait_for(predicate: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.1)


async def test_workers_are_replaced_and_drain_on_sigterm(
    catalog_file: Path, redis_url: str, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    proc = start_process(catalog_file, redis_url, tmp_path, "--workers", "2")
    try:
        await wait_for(lambda: len(child_pids(proc.process.pid)) == 2)
        first = child_pids(proc.process.pid)
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
            key = await new_key(http, proc.admin, "hobby")
            headers = {"Authorization": f"Bearer {key}"}
            for _ in range(20):
                async with http.post(f"{proc.public}/v1/monitor/flat", headers=headers) as r:
                    assert r.status == 200
            counted = samples(await metrics_text(http, proc.admin), "gateway_requests_total")
            assert (
                counted[(("code", "200"), ("outcome", "charged"), ("route", "/v1/monitor/flat"))]
                == 20
            )  # summed over both workers
            os.kill(first[0], signal.SIGKILL)
            await wait_for(
                lambda: (
                    len(child_pids(proc.process.pid)) == 2
                    and first[0] not in child_pids(proc.process.pid)
                )
            )
            for _ in range(20):
                async with http.post(f"{proc.public}/v1/monitor/flat", headers=headers) as r:
                    assert r.status == 200
            slow = asyncio.create_task(
                http.post(f"{proc.public}/v1/monitor/flat?sleep=1", headers=headers)
            )
            await wait_for(lambda: sum(upstream.in_flight.values()) == 1)
            proc.signal(signal.SIGTERM)
            reply = await slow
            assert reply.status == 200
            reply.release()
        try:
            code = proc.wait()
        except subprocess.TimeoutExpired:
            tree = subprocess.run(
                ["ps", "-o", "pid,ppid,stat,etime,cmd", "--ppid", str(proc.process.pid)],
                capture_output=True,
                text=True,
            ).stdout
            raise AssertionError(f"did not stop:\n{tree}\n{proc.log()[-3000:]}") from None
        assert code == 0
    finally:
        proc.stop()


async def test_sigterm_past_the_grace_releases_uncharged(
    tmp_path: Path, redis_url: str, upstream: RecordingUpstream
) -> None:
    limits = {
        "lease_ttl_s": 30,
        "max_request_body_bytes": 4096,
        "charge_on_client_cancel": True,
        "shutdown_grace_s": 1,
    }
    upstreams = {"scrapers": {"url": upstream.url, "timeout_s": 30, "connect_timeout_s": 1}}
    catalog = write_catalog(tmp_path / "c.yaml", upstream.url, limits=limits, upstreams=upstreams)
    proc = start_process(catalog, redis_url, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            _status, account = await admin_post(
                http, proc.admin, "/admin/accounts", {"name": "t", "plan": "lite"}
            )
            _, key = await admin_post(http, proc.admin, f"/admin/orgs/{account['org_id']}/keys")
            headers = {"Authorization": f"Bearer {key['key']}"}
            slow = asyncio.create_task(
                http.post(f"{proc.public}/v1/monitor/flat?sleep=5", headers=headers)
            )
            await wait_for(lambda: sum(upstream.in_flight.values()) == 1)
            started = time.monotonic()
            proc.signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientError):
                await slow
            assert proc.wait() == 0
            assert time.monotonic() - started < 4
    finally:
        proc.stop()
    r = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        fields = await r.hmget(f"gw:{{acct:{account['id']}}}:account", "used", "held")
        assert fields == ["0", "0"]
        assert await r.zcard(f"gw:{{acct:{account['id']}}}:leases:{account['org_id']}") == 0
    finally:
        await r.aclose()


async def test_the_access_log_file_keeps_every_line_through_a_sigterm_drain(
    catalog_file: Path, redis_url: str, tmp_path: Path, upstream: RecordingUpstream
) -> None:
    """Lines are buffered, never lost: N requests, the last one in flight at SIGTERM, give N
    lines with every field, in the file named by GATEWAY_ACCESS_LOG and nowhere else."""
    access = tmp_path / "access.log"
    proc = start_process(catalog_file, redis_url, tmp_path, env={"GATEWAY_ACCESS_LOG": str(access)})
    n = 40
    try:
        async with aiohttp.ClientSession() as http:
            key = await new_key(http, proc.admin, "hobby")
            headers = {"Authorization": f"Bearer {key}"}
            for i in range(n - 1):
                path = "/v1/monitor/flat?status=500" if i % 4 == 0 else "/v1/monitor/flat"
                async with http.post(proc.public + path, headers=headers) as r:
                    await r.read()
            slow = asyncio.create_task(
                http.post(f"{proc.public}/v1/monitor/flat?sleep=1", headers=headers)
            )
            await wait_for(lambda: sum(upstream.in_flight.values()) == 1)
            proc.signal(signal.SIGTERM)
            reply = await slow
            assert reply.status == 200
            reply.release()
        assert proc.wait() == 0
    finally:
        proc.stop()
    text = access.read_text()
    assert key not in text and key[8:] not in text and ADMIN_TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines()]
    proxied = [line for line in lines if line["route"] != "unmatched"]  # less the probe
    assert len(proxied) == n and len({line["request_id"] for line in proxied}) == n
    assert all(
        set(line)
        == {
            "time",
            "level",
            "logger",
            "message",
            "request_id",
            "account",
            "org",
            "route",
            "status",
            "outcome",
            "credits",
            "latency_ms",
            "upstream_ms",
        }
        for line in lines
    )
    assert Counter((line["status"], line["outcome"], line["credits"]) for line in proxied) == {
        (200, "charged", 10): 30,
        (500, "upstream_error", 0): 10,
    }
    last = proxied[-1]
    assert last["message"] == "POST /v1/monitor/flat 200" and last["upstream_ms"] >= 1000
    assert last["logger"] == "gateway.access" and last["level"] == "info"
    assert "gateway.access" not in proc.log()


async def test_logs_are_json_lines_without_keys_or_tokens(
    catalog_file: Path, redis_url: str, tmp_path: Path
) -> None:
    proc = start_process(catalog_file, redis_url, tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            key = await new_key(http, proc.admin)
            calls = [
                ("POST", "/v1/monitor/flat", {"Authorization": f"Bearer {key}"}),
                ("POST", "/v1/monitor/flat?status=500", {"Authorization": f"Bearer {key}"}),
                ("POST", "/v1/monitor/flat", {"Authorization": f"Bearer {key[:-1]}X"}),
                ("POST", "/v1/monitor/chatgpt", {"Authorization": f"Bearer {key}"}),
            ]
            for method, path, headers in calls:
                async with http.request(method, proc.public + path, headers=headers) as r:
                    await r.read()
            async with http.get(
                f"{proc.admin}/admin/accounts/x", headers={"Authorization": "Bearer wrong-token"}
            ) as r:
                assert r.status == 401
    finally:
        proc.stop()
    text = proc.log()
    assert key not in text and key[8:] not in text and ADMIN_TOKEN not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    # (The readiness probe's 404 on /nowhere is logged too; leave it out.)
    access = [
        line
        for line in lines
        if line["logger"] == "gateway.access" and line["route"] != "unmatched"
    ]
    assert len(access) == 4
    charged = access[0]
    assert charged["status"] == 200 and charged["credits"] == 10
    assert {
        "request_id",
        "account",
        "org",
        "route",
        "status",
        "credits",
        "latency_ms",
        "upstream_ms",
    } <= set(charged)
    assert charged["upstream_ms"] is not None
    assert [line["status"] for line in access] == [200, 500, 401, 400]
