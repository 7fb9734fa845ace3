"""`make bench-queue` (bench/queues.py, not queue.py: that would shadow the stdlib module):

1. The sync hot path, wrk at 64 connections against one gateway process: this checkout, the
   build before the queues (BENCH_BASE, default the merge base with main, unpacked with `git
   archive`), and this checkout while 100,000 tasks of another org sit queued; with Redis
   commands per request (the hot path stays at one admit and one settle).
2. A 500-item batch accepted (client-side latency over 20 batches).
3. Queue drain with a zero-latency upstream, one gateway process: tasks/s.
4. A freed slot reaching the next entry: the same process (queued tasks behind a running one)
   and another process (a sync request waiting on a second gateway), from the moment the
   upstream sent the freeing answer to the moment the next request reached it.
5. Redis memory per queued task, payload aside, and the admit script's latency with 100,000
   tasks queued.
Writes bench/results/queue.json and prints it."""

from __future__ import annotations

import asyncio
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bench.run as bench  # noqa: E402
from gateway.metrics import Metrics  # noqa: E402
from gateway.queue.store import QueueStore  # noqa: E402
from gateway.queue.tasks import NewTask  # noqa: E402
from gateway.store.ledger import Identity, Ledger  # noqa: E402
from tests.support.harness import start_gateway  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
HELD = int(os.environ.get("BENCH_QUEUED", "100000"))
CATALOG = """
upstreams:
  scrapers: {{url: "{upstream}", timeout_s: 30, connect_timeout_s: 5}}
routes:
  - path: /v1/monitor/chatgpt
    methods: [POST]
    upstream: scrapers
    price: {{base: 7}}
plans:
  bench: {{price_cents: 100, credits: 1000000000, concurrency: 20000, rate_limit_rps: 1000000}}
  wide:  {{price_cents: 100, credits: 1000000000, concurrency: 256, rate_limit_rps: 1000000}}
  one:   {{price_cents: 100, credits: 1000000000, concurrency: 1, rate_limit_rps: 1000000}}
async:
  task_types: {{CHATGPT: /v1/monitor/chatgpt}}
  max_batch: 500
limits: {{lease_ttl_s: 30, max_request_body_bytes: 1048576, shutdown_grace_s: 5,
         max_queue_wait_s: 10, max_waiting_per_org: 1000}}
"""
ITEM = {"taskType": "CHATGPT", "payload": {"prompt": "best running shoes"}}


def base_tree(into: Path) -> Path | None:
    commit = (
        os.environ.get("BENCH_BASE")
        or subprocess.run(
            ["git", "merge-base", "HEAD", "main"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    )
    if not commit:
        return None
    archive = subprocess.run(["git", "archive", commit], cwd=ROOT, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def customer(admin_port: int, plan: str) -> tuple[str, str, str]:
    account = bench.admin(admin_port, "/admin/accounts", {"name": "bench", "plan": plan})
    key = bench.admin(admin_port, f"/admin/orgs/{account['org_id']}/keys")
    return account["id"], account["org_id"], key["key"]


async def post(http: aiohttp.ClientSession, url: str, key: str, body: Any) -> Any:
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
        assert r.status == 200, await r.text()
        return await r.json()


async def fill(url: str, key: str, count: int) -> float:
    """Queue `count` tasks in batches of 500; returns the median batch latency (ms)."""
    times = []
    async with aiohttp.ClientSession() as http:
        for _ in range(count // 500):
            started = time.perf_counter()
            await post(http, url + "/v1/async/task/batch", key, [ITEM] * 500)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


async def batch_and_drain(url: str, admin_port: int) -> dict[str, Any]:
    _, _, key = customer(admin_port, "wide")
    latencies = []
    async with aiohttp.ClientSession() as http:
        started = time.perf_counter()
        for _ in range(20):
            t0 = time.perf_counter()
            await post(http, url + "/v1/async/task/batch", key, [ITEM] * 500)
            latencies.append((time.perf_counter() - t0) * 1000)
        while True:
            async with http.get(
                url + "/v1/async/status", headers={"Authorization": f"Bearer {key}"}
            ) as r:
                status = await r.json()
            if not status["queuedTasks"] and not status["processingTasks"]:
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
    latencies.sort()
    return {
        "batch_500_accept_ms_p50": round(statistics.median(latencies), 1),
        "batch_500_accept_ms_max": round(latencies[-1], 1),
        "drain_tasks": 10_000,
        "drain_seconds": round(seconds, 2),
        "drain_tasks_per_s": round(10_000 / seconds),
    }


class Clocked:
    """An in-process upstream that notes when each request arrives and when it answers."""

    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        self.answered: dict[str, float] = {}
        self.url = ""

    async def start(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        return runner

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        mark = request.query.get("mark") or json.loads(body or b"{}").get("mark", "")
        self.arrived[mark] = time.perf_counter()
        hold = float(request.query.get("hold", 0) or json.loads(body or b"{}").get("hold", 0))
        await asyncio.sleep(hold)
        self.answered[mark] = time.perf_counter()
        return web.json_response({"success": True})


async def handoff(redis_url: str) -> dict[str, Any]:
    """Freed slot -> next entry at the upstream, in one process and across two gateways."""
    from tests.support.harness import catalog_for

    upstream = Clocked()
    runner = await upstream.start()
    path = Path(tempfile.mkdtemp()) / "catalog.yaml"
    path.write_text(CATALOG.format(upstream=upstream.url))
    catalog = catalog_for(upstream.url, path)
    a = await start_gateway(redis_url, catalog)
    b = await start_gateway(redis_url, catalog)
    try:
        c = await a.new_customer("one")
        same: list[float] = []
        items = [{**ITEM, "payload": {"mark": f"t{i}", "hold": 0.005}} for i in range(200)]
        await a.call("POST", "/v1/async/task/batch", c.key, json=items)
        while len(upstream.answered) < 200:
            await asyncio.sleep(0.05)
        for i in range(1, 200):
            same.append((upstream.arrived[f"t{i}"] - upstream.answered[f"t{i - 1}"]) * 1000)
        other: list[float] = []
        for i in range(100):
            blocker = asyncio.create_task(
                a.call("POST", f"/v1/monitor/chatgpt?mark=b{i}&hold=0.03", c.key, json={})
            )
            await asyncio.sleep(0.01)
            status, _, _ = await b.call(
                "POST",
                f"/v1/monitor/chatgpt?mark=w{i}",
                c.key,
                json={},
                headers={"Prefer": "wait=5"},
            )
            assert status == 200
            await blocker
            other.append((upstream.arrived[f"w{i}"] - upstream.answered[f"b{i}"]) * 1000)
    finally:
        await a.close()
        await b.close()
        await runner.cleanup()
    return {"same_process_ms": _pcts(same), "other_process_ms": _pcts(other)}


def _pcts(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "p50": round(values[len(values) // 2], 2),
        "p99": round(values[min(len(values) - 1, int(len(values) * 0.99))], 2),
        "n": len(values),
    }


async def memory_and_admit(redis_url: str, port: int) -> dict[str, Any]:
    """INFO used_memory per queued task (payload aside) and admit latency around HELD tasks."""
    import redis.asyncio as aioredis

    from gateway.catalog.models import Plan
    from gateway.store.accounts import Accounts

    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    await client.flushall()
    ledger = Ledger(client, Metrics(), 5.0)
    accounts = Accounts(client)
    plan = Plan(price_cents=1, credits=10**9, concurrency=1, rate_limit_rps=10**6)
    from gateway.clock import system_clock, to_ms

    now = system_clock()
    made = []
    for _ in range(2):
        record = await accounts.create_public(
            name="m", plan_name="p", plan=plan, anchor=now, now=now
        )
        key, _ = await accounts.create_key(record.orgs[0].id, now)  # type: ignore[misc]
        made.append(Identity(record.id, record.orgs[0].id, key.id))
    queued, other = made

    async def admit_ms() -> float:
        times = []
        for i in range(2000):
            t0 = time.perf_counter()
            await ledger.admit(
                other,
                request_id=f"r{i}{time.time()}",
                now_ms=to_ms(system_clock()),
                lease_ttl_ms=30000,
                price=1,
                enterprise_only=False,
                pricing_version="0",
            )
            times.append((time.perf_counter() - t0) * 1000)
            await ledger.settle(
                other,
                {
                    "request_id": f"x{i}",
                    "now_ms": to_ms(system_clock()),
                    "charge": False,
                    "price": 1,
                    "cycle": 0,
                    "route": "r",
                    "status": 200,
                    "latency_ms": 1,
                    "idempotency_key": "",
                    "response": "-",
                },
            )
        return statistics.median(times)

    await client.delete(f"gw:{{acct:{other.account_id}}}:leases:{other.org_id}")
    before_admit = await admit_ms()
    await client.delete(f"gw:{{acct:{other.account_id}}}:leases:{other.org_id}")
    store = QueueStore(ledger)
    used_before = int((await client.info("memory"))["used_memory"])
    payload = json.dumps({"prompt": "best running shoes"})
    n = 0
    while n < HELD:
        items = [
            NewTask(
                f"task_{n + i:024d}",
                "CHATGPT",
                "/v1/monitor/chatgpt",
                1,
                5,
                False,
                None,
                None,
                payload,
            )
            for i in range(500)
        ]
        await store.enqueue(queued, to_ms(system_clock()), items)
        n += 500
    used_after = int((await client.info("memory"))["used_memory"])
    after_admit = await admit_ms()
    await client.aclose()
    per_task = (used_after - used_before) / HELD
    return {
        "queued_tasks": HELD,
        "redis_bytes_per_queued_task": round(per_task),
        "payload_bytes": len(payload),
        "redis_bytes_per_queued_task_payload_aside": round(per_task - len(payload)),
        "admit_ms_p50_without_queue": round(before_admit, 3),
        "admit_ms_p50_with_queue": round(after_admit, 3),
    }


def main() -> int:
    stack = bench.Stack()
    redis = RedisServer().start()
    results: dict[str, Any] = {}
    try:
        up = free_port()
        stack.spawn(bench.PY, str(ROOT / "bench" / "upstream.py"), str(up))
        upstream = f"http://127.0.0.1:{up}"
        bench.wait_http(upstream + "/")
        base = base_tree(stack.dir / "before")
        catalog = stack.dir / "catalog.yaml"
        catalog.write_text(CATALOG.format(upstream=upstream))
        # The build before the queues knows neither the async block nor the waiting limits.
        before = stack.dir / "catalog-before.yaml"
        before.write_text(
            CATALOG.format(upstream=upstream)
            .replace("async:\n  task_types: {CHATGPT: /v1/monitor/chatgpt}\n  max_batch: 500\n", "")
            .replace(",\n         max_queue_wait_s: 10, max_waiting_per_org: 1000}", "}")
        )
        targets: dict[str, tuple[str, str, int, int]] = {}
        for name, tree in {"queue": ROOT, **({"before": base} if base else {})}.items():
            port, admin_port = free_port(), free_port()
            proc = stack.gateway(
                catalog if name == "queue" else before, redis.url, port, admin_port, tree=tree
            )
            bench.wait_http(f"http://127.0.0.1:{admin_port}/healthz")
            _, _, key = customer(admin_port, "bench")
            targets[name] = (f"http://127.0.0.1:{port}", key, proc.pid, admin_port)

        def wrk_rounds(names: list[str]) -> dict[str, Any]:
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
            for _ in range(ROUNDS):
                for name in names:
                    url, key, pid, _ = targets[name]
                    runs[name].append(
                        bench.measure("gateway", url + "/v1/monitor/chatgpt", 64, key, pid, redis)
                    )
            return {name: bench.median_run(r) for name, r in runs.items()}

        sync = wrk_rounds(list(targets))
        url, key, pid, admin_port = targets["queue"]
        results["batch_and_drain"] = asyncio.run(batch_and_drain(url, admin_port))
        # HELD tasks of an org whose one slot a long sync request holds: they stay queued.
        _, _, held_key = customer(admin_port, "one")
        until = time.time() + 3600

        async def hold_and_fill() -> float:
            async with aiohttp.ClientSession() as http:
                blocker = asyncio.ensure_future(
                    http.post(
                        f"{url}/v1/monitor/chatgpt?until={until}",
                        json={},
                        headers={"Authorization": f"Bearer {held_key}"},
                    )
                )
                await asyncio.sleep(0.5)
                median = await fill(url, held_key, HELD)
                blocker.cancel()
                return median

        results["batch_500_accept_ms_p50_while_filling"] = round(asyncio.run(hold_and_fill()), 1)
        with_queue = wrk_rounds(["queue"])
        results["sync_hot_path"] = {
            name: {
                k: run[k]
                for k in (
                    "rps",
                    "p50_ms",
                    "p99_ms",
                    "cpu_us_per_request",
                    "redis_calls_per_request",
                )
                if k in run
            }
            for name, run in sync.items()
        }
        results["sync_hot_path"]["queue_with_held_tasks"] = {
            k: with_queue["queue"][k]
            for k in ("rps", "p50_ms", "p99_ms", "redis_calls_per_request")
        }
        if "before" in sync:
            results["sync_hot_path"]["queue_vs_before"] = round(
                sync["queue"]["rps"] / sync["before"]["rps"], 3
            )
        for _, _, pid, _ in targets.values():
            os.kill(pid, 15)
        second = RedisServer().start()
        try:
            results["handoff"] = asyncio.run(handoff(second.url))
            results["memory_and_admit"] = asyncio.run(memory_and_admit(second.url, second.port))
        finally:
            second.stop()
    finally:
        stack.stop()
        redis.stop()
    out = ROOT / "bench" / "results" / "queue.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
