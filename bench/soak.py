"""`make soak`: about five minutes of load while Redis restarts, gateways are SIGKILLed and the
upstream fails at random; then check the promises that must survive all of that:

- per-org requests in flight at the upstream never exceeded the org's concurrency limit;
- credits charged in Redis equal the sum of X-Credits-Charged on the successes clients received;
- no public balance went negative.

Bounded: SOAK_SECONDS (default 300) of load on loopback only. Results: bench/results/soak.json."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import redis.asyncio as aioredis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.process import write_catalog  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.upstream import RecordingUpstream  # noqa: E402

SECONDS = float(os.environ.get("SOAK_SECONDS", "300"))
ORGS = 6
CLIENTS_PER_ORG = 6  # twice the plan's concurrency: the limit is always being tested
CONCURRENCY = 3
PRICE = 10
TOKEN = "soak-token"


class Gateway:
    """One `gateway serve` process that the soak kills and restarts on the same ports."""

    def __init__(self, catalog: Path, redis_url: str, spool: Path, log_dir: Path) -> None:
        self.port, self.admin_port = free_port(), free_port()
        self._args = [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(catalog),
            "--port",
            str(self.port),
            "--admin-port",
            str(self.admin_port),
            "--redis-url",
            redis_url,
        ]
        self._env = {
            **os.environ,
            "GATEWAY_ADMIN_TOKEN": TOKEN,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_SPOOL_DIR": str(spool),
            "GATEWAY_LOG_LEVEL": "WARNING",
        }
        self._log = (log_dir / f"gateway-{self.port}.log").open("ab")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self._args, env=self._env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/healthz", timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("gateway did not start") from None
                time.sleep(0.1)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=60)

    def pending(self) -> int:
        try:
            raw = urllib.request.urlopen(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2)
        except urllib.error.HTTPError as exc:
            raw = exc
        return int(json.loads(raw.read())["settlements_pending"])


async def admin(
    http: aiohttp.ClientSession, port: int, path: str, body: dict[str, str] | None = None
) -> Any:
    async with http.post(
        f"http://127.0.0.1:{port}{path}",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as reply:
        return await reply.json()


async def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="gateway-soak-"))
    redis_server = RedisServer(extra_args=("--appendonly", "yes", "--appendfsync", "always"))
    redis_server.start()
    upstream = await RecordingUpstream().start()
    # Long enough that a spooled settlement replays before another admission could reclaim its
    # lease (an outage here lasts under 2 s); short enough that a killed gateway's slots return.
    limits = {
        "lease_ttl_s": 10,
        "max_request_body_bytes": 4096,
        "charge_on_client_cancel": True,
        "shutdown_grace_s": 5,
    }
    upstreams = {"scrapers": {"url": upstream.url, "timeout_s": 10, "connect_timeout_s": 1}}
    # Half the accounts run out of credits mid-soak: their balance must stop at zero.
    plans = {
        name: {
            "price_cents": 100,
            "credits": credits,
            "concurrency": CONCURRENCY,
            "rate_limit_rps": 1000,
        }
        for name, credits in (("soak", 10_000_000), ("small", 2_000))
    }
    catalog = write_catalog(
        work / "catalog.yaml", upstream.url, limits=limits, upstreams=upstreams, plans=plans
    )
    gateways = [Gateway(catalog, redis_server.url, work / "spool", work) for _ in range(2)]
    for gateway in gateways:
        gateway.start()
    statuses: Counter[int] = Counter()
    errors: Counter[str] = Counter()
    delivered: Counter[str] = Counter()
    # Connections cut by a SIGKILLed gateway: such a request may have been charged (settle ran)
    # before its response could be written. No process can deliver after its own death.
    cut_off: Counter[str] = Counter()
    events: Counter[str] = Counter()
    stop = asyncio.Event()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        customers = []
        for n in range(ORGS):
            plan = "soak" if n % 2 else "small"
            account = await admin(
                http, gateways[0].admin_port, "/admin/accounts", {"name": f"soak {n}", "plan": plan}
            )
            key = await admin(http, gateways[0].admin_port, f"/admin/orgs/{account['org_id']}/keys")
            customers.append((account["id"], account["org_id"], key["key"]))

        async def client(account_id: str, key: str) -> None:
            rng = random.Random()
            timeout = aiohttp.ClientTimeout(total=15)
            while not stop.is_set():
                gateway = rng.choice(gateways)
                query = f"sleep={rng.choice([0, 0.01, 0.05, 0.2])}"
                if rng.random() < 0.05:
                    query += "&status=" + rng.choice(["500", "502", "429"])
                url = f"http://127.0.0.1:{gateway.port}/v1/monitor/flat?{query}"
                try:
                    async with http.post(
                        url, headers={"Authorization": f"Bearer {key}"}, timeout=timeout
                    ) as reply:
                        await reply.read()
                        statuses[reply.status] += 1
                        if reply.status == 200:
                            delivered[account_id] += int(reply.headers["X-Credits-Charged"])
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] += 1
                    cut = isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError)
                    if cut and not isinstance(exc, aiohttp.ClientConnectorError):
                        cut_off[account_id] += 1
                    await asyncio.sleep(0.05)

        async def chaos() -> None:
            rng = random.Random(7)
            while not stop.is_set():
                await asyncio.sleep(rng.uniform(5, 15))
                if stop.is_set():
                    return
                if rng.random() < 0.5:
                    redis_server.halt()
                    events["redis_restarts"] += 1
                    await asyncio.sleep(rng.uniform(0.2, 1.5))
                    redis_server.start()
                else:
                    victim = rng.choice(gateways)
                    victim.kill()
                    events["gateway_kills"] += 1
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    await asyncio.to_thread(victim.start)

        tasks = [
            asyncio.create_task(client(a, k))
            for a, _, k in customers
            for _ in range(CLIENTS_PER_ORG)
        ]
        tasks.append(asyncio.create_task(chaos()))
        started = time.monotonic()
        await asyncio.sleep(SECONDS)
        stop.set()
        await asyncio.gather(*tasks)
        elapsed = time.monotonic() - started

    # Let spooled settlements land, then read the books.
    deadline = time.monotonic() + 60
    while any(g.pending() for g in gateways) and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    await asyncio.sleep(1)
    store = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    accounts = {}
    for account_id, org_id, _ in customers:
        used, held, allocation = await store.hmget(
            f"gw:{{acct:{account_id}}}:account", "used", "held", "allocation"
        )
        accounts[account_id] = {
            "org": org_id,
            "used": int(used),
            "held": int(held),
            "allocation": int(allocation),
            "delivered": delivered[account_id],
            "cut_off": cut_off[account_id],
            "max_in_flight": upstream.max_in_flight[org_id],
        }
    await store.aclose()
    for gateway in gateways:
        gateway.stop()
    await upstream.stop()
    redis_server.stop()

    checks = {
        "in_flight_within_limit": all(a["max_in_flight"] <= CONCURRENCY for a in accounts.values()),
        # Exact, except for requests whose gateway was killed between charging and answering:
        # each of those costs one price at most and shows up as a cut connection.
        "charged_equals_delivered": all(
            0 <= a["used"] - a["delivered"] <= PRICE * a["cut_off"]
            and (a["used"] - a["delivered"]) % PRICE == 0
            for a in accounts.values()
        ),
        "no_negative_balance": all(a["allocation"] - a["used"] >= 0 for a in accounts.values()),
    }
    charged_but_cut_off = sum(a["used"] - a["delivered"] for a in accounts.values()) // PRICE
    result = {
        "charged_but_cut_off_by_a_kill": charged_but_cut_off,
        "seconds": round(elapsed, 1),
        "requests": sum(statuses.values()),
        "statuses": dict(statuses),
        "client_errors": dict(errors),
        "events": dict(events),
        "accounts": accounts,
        "checks": checks,
    }
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "soak.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "accounts"}, indent=2))
    for account_id, row in accounts.items():
        print(account_id, row)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
