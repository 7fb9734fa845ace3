"""`make bench`: the upstream directly, a bare aiohttp proxy and gateway, under one load generator.

Writes bench/results/latest.json and prints a table. Sanity checks (not speed) fail the run:
every response must be 200 and the credits charged must equal requests x price."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

PY = sys.executable
DURATION = os.environ.get("BENCH_DURATION", "8s")
PRICE = 7
CATALOG = """
upstreams:
  scrapers: {{url: "{upstream}", timeout_s: 30, connect_timeout_s: 5}}
routes:
  - path: /v1/monitor/chatgpt
    methods: [POST]
    upstream: scrapers
    price: {{base: {price}}}
plans:
  bench: {{price_cents: 100, credits: 1000000000, concurrency: 10000, rate_limit_rps: 1000000}}
"""


def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError as exc:
            if getattr(exc, "code", None):  # an HTTP error status: it is answering
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def admin(port: int, token: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method="POST",
        data=json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {token}"},
    )
    return json.loads(urllib.request.urlopen(request).read())


def wrk(url: str, connections: int, key: str = "") -> dict[str, Any]:
    threads = min(2, connections)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{DURATION}",
            "--latency",
            "-s",
            str(ROOT / "bench" / "post.lua"),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "BENCH_KEY": key},
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "requests": total,
        "non_2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else None,
        "p50_ms": _latency(out, "50%"),
        "p99_ms": _latency(out, "99%"),
    }


def _latency(out: str, pct: str) -> float:
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)", out)
    assert match, out
    value, unit = float(match.group(1)), match.group(2)
    return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value


def commandstats(port: int) -> dict[str, int]:
    out = subprocess.run(
        ["redis-cli", "-p", str(port), "info", "commandstats"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"cmdstat_(\S+):calls=(\d+)", out)}


def main() -> int:
    procs: list[subprocess.Popen[bytes]] = []
    redis_server = RedisServer().start()
    results: dict[str, Any] = {"duration": DURATION, "runs": {}}
    try:
        up_port, bare_port, gw_port, gw_admin = (free_port() for _ in range(4))
        upstream = f"http://127.0.0.1:{up_port}"
        procs.append(subprocess.Popen([PY, str(ROOT / "bench/upstream.py"), str(up_port)]))
        procs.append(
            subprocess.Popen([PY, str(ROOT / "bench/bare_proxy.py"), str(bare_port), upstream])
        )
        catalog = Path(tempfile.mkdtemp()) / "bench.yaml"
        catalog.write_text(CATALOG.format(upstream=upstream, price=PRICE))
        token = "bench-token"
        env = {
            **os.environ,
            "GATEWAY_ADMIN_TOKEN": token,
            "GATEWAY_LOG_LEVEL": "WARNING",
            "GATEWAY_HOST": "127.0.0.1",
        }
        procs.append(
            subprocess.Popen(
                [
                    PY,
                    "-m",
                    "gateway",
                    "serve",
                    "--config",
                    str(catalog),
                    "--port",
                    str(gw_port),
                    "--admin-port",
                    str(gw_admin),
                    "--redis-url",
                    redis_server.url,
                ],
                env=env,
                cwd=ROOT,
            )
        )
        for port in (up_port, bare_port, gw_admin):
            wait_http(f"http://127.0.0.1:{port}/healthz")
        account = admin(gw_admin, token, "/admin/accounts", {"name": "bench", "plan": "bench"})
        key = admin(gw_admin, token, f"/admin/orgs/{account['org_id']}/keys")["key"]

        path = "/v1/monitor/chatgpt"
        targets = {
            "upstream": f"{upstream}{path}",
            "bare_proxy": f"http://127.0.0.1:{bare_port}{path}",
            "gateway": f"http://127.0.0.1:{gw_port}{path}",
        }
        for connections in (64, 1):
            for name, url in targets.items():
                subprocess.run(
                    ["redis-cli", "-p", str(redis_server.port), "config", "resetstat"],
                    check=True,
                    capture_output=True,
                )
                run = wrk(url, connections, key)
                if name == "gateway":
                    stats = commandstats(redis_server.port)
                    run["redis_evalsha_per_request"] = round(
                        stats.get("evalsha", 0) / run["requests"], 3
                    )
                    run["redis_commands_per_request"] = {
                        cmd: round(n / run["requests"], 3)
                        for cmd, n in sorted(stats.items())
                        if not cmd.startswith("config")
                    }
                results["runs"][f"{name}@{connections}"] = run
        used = json.loads(
            urllib.request.urlopen(
                urllib.request.Request(
                    f"http://127.0.0.1:{gw_admin}/admin/accounts/{account['id']}",
                    headers={"Authorization": f"Bearer {token}"},
                )
            ).read()
        )["credits"]["used"]
        gateway_requests = sum(
            r["requests"] for n, r in results["runs"].items() if n.startswith("gateway")
        )
        # wrk stops counting at the deadline while up to one request per connection is still
        # in flight; the gateway completes (and charges) those, so allow exactly that slack.
        in_flight_at_stop = sum(c for c in (64, 1)) * PRICE
        results["sanity"] = {
            "all_200": all(
                r["non_2xx"] == 0 and not r["socket_errors"] for r in results["runs"].values()
            ),
            "credits_used": used,
            "counted_requests_x_price": gateway_requests * PRICE,
            "max_uncounted": in_flight_at_stop,
        }
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            proc.wait(timeout=15)
        redis_server.stop()

    for c in (64, 1):
        bare = results["runs"][f"bare_proxy@{c}"]
        for name in ("upstream", "bare_proxy", "gateway"):
            run = results["runs"][f"{name}@{c}"]
            run["ratio_to_bare"] = round(run["rps"] / bare["rps"], 3)
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"{'target':<22}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'x bare':>9}")
    for name, run in results["runs"].items():
        print(
            f"{name:<22}{run['rps']:>10.0f}{run['p50_ms']:>10.2f}{run['p99_ms']:>10.2f}"
            f"{run['ratio_to_bare']:>9.2f}"
        )
    for name, run in results["runs"].items():
        if "redis_commands_per_request" in run:
            print(f"{name}: Redis commands per request {run['redis_commands_per_request']}")
    print("sanity:", results["sanity"])
    sanity = results["sanity"]
    extra = sanity["credits_used"] - sanity["counted_requests_x_price"]
    ok = sanity["all_200"] and 0 <= extra <= sanity["max_uncounted"] and extra % PRICE == 0
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
