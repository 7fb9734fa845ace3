"""`make bench-cluster`: the same gateway on a 3-master Redis Cluster and on one plain
redis-server, in one run.

Three builds take turns for BENCH_ROUNDS rounds at 64 connections (wrk), each as one worker
against the same upstream: this checkout on the plain server, this checkout on the Cluster,
and the build before the Cluster's per-master script connections (BEFORE) on the same Cluster.
The report is each one's median req/s and its ratio to the plain-server run of the same round
(the box is shared and drifts, so only same-round ratios compare), CPU per request of the
gateway and of Redis (all nodes). Sanity: every response 200. Writes
bench/results/cluster.json."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402
from steps import checkout  # noqa: E402

from tests.support.redis_cluster import RedisCluster  # noqa: E402
from tests.support.redis_server import RedisServer, free_port  # noqa: E402

BEFORE = os.environ.get("BENCH_CLUSTER_BEFORE", "f7e5e4e")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = 64


def gateway(
    stack: bench.Stack, catalog: Path, url: str, mode: str, tree: Path
) -> tuple[int, int, int]:
    """One `gateway serve` worker; (port, admin port, pid)."""
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_ADMIN_TOKEN": bench.TOKEN,
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_SPOOL_DIR": str(stack.dir / f"spool-{port}"),
        "GATEWAY_REDIS_MODE": mode,
    }
    proc = stack.spawn(
        bench.PY, "-m", "gateway", "serve", "--config", str(catalog),
        "--port", str(port), "--admin-port", str(admin_port), "--redis-url", url,
        env=env, cwd=tree,
    )  # fmt: skip
    bench.wait_http(f"http://127.0.0.1:{admin_port}/healthz")
    return port, admin_port, proc.pid


def measure(url: str, key: str, pid: int, redis_pids: list[int]) -> dict[str, Any]:
    before, redis_before = bench.cpu_s(bench.family(pid)), bench.cpu_s(redis_pids)
    run = bench.wrk(url, CONNECTIONS, key)
    run["cpu_us_per_request"] = round(
        (bench.cpu_s(bench.family(pid)) - before) / run["requests"] * 1e6, 1
    )
    run["redis_cpu_us_per_request"] = round(
        (bench.cpu_s(redis_pids) - redis_before) / run["requests"] * 1e6, 1
    )
    return run


def main() -> int:
    stack = bench.Stack()
    plain = RedisServer().start()
    cluster = RedisCluster().start()
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        up = free_port()
        upstream = f"http://127.0.0.1:{up}"
        stack.spawn(bench.PY, str(ROOT / "bench/upstream.py"), str(up))
        bench.wait_http(f"http://127.0.0.1:{up}/healthz")
        catalog = stack.dir / "bench.yaml"
        catalog.write_text(
            bench.CATALOG.format(upstream=upstream, price=bench.PRICE, path=bench.PATH)
        )
        before = checkout(BEFORE, stack.dir / f"build-{BEFORE}")
        builds = {  # label -> (redis url, mode, tree, Redis processes)
            "standalone": (plain.url, "standalone", ROOT, [plain]),
            "cluster": (cluster.url, "cluster", ROOT, cluster.nodes),
            f"cluster_{BEFORE}": (cluster.url, "cluster", before, cluster.nodes),
        }
        targets: dict[str, tuple[str, int, str, list[int]]] = {}  # url, pid, key, redis pids
        for label, (redis_url, mode, tree, servers) in builds.items():
            port, admin_port, pid = gateway(stack, catalog, redis_url, mode, tree)
            account = bench.admin(admin_port, "/admin/accounts", {"name": label, "plan": "bench"})
            key = bench.admin(admin_port, f"/admin/orgs/{account['org_id']}/keys")["key"]
            pids = [s.process.pid for s in servers if s.process is not None]
            targets[label] = (f"http://127.0.0.1:{port}{bench.PATH}", pid, key, pids)
        for url, _, key, _ in targets.values():  # warm up: key caches, slot maps, pools
            subprocess.run(
                ["wrk", "-t1", "-c4", "-d1s", "-s", str(ROOT / "bench/post.lua"), url],
                env={**os.environ, "BENCH_KEY": key},
                capture_output=True,
                check=True,
            )
        for _ in range(ROUNDS):
            for label, (url, pid, key, redis_pids) in targets.items():
                rounds.setdefault(label, []).append(measure(url, key, pid, redis_pids))
    finally:
        stack.stop()
        plain.stop()
        cluster.stop()

    results: dict[str, Any] = {"duration": bench.DURATION, "rounds": ROUNDS, "runs": {}}
    for label, runs in rounds.items():
        ratios = [m["rps"] / s["rps"] for m, s in zip(runs, rounds["standalone"], strict=True)]
        results["runs"][label] = {
            "rps": statistics.median(r["rps"] for r in runs),
            "ratio_to_standalone": round(statistics.median(ratios), 3),
            "ratio_to_standalone_per_round": [round(r, 3) for r in ratios],
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
            "redis_cpu_us_per_request": statistics.median(
                r["redis_cpu_us_per_request"] for r in runs
            ),
            "non_2xx": sum(r["non_2xx"] for r in runs),
            "socket_errors": [r["socket_errors"] for r in runs if r["socket_errors"]],
        }
    all_200 = all(not r["non_2xx"] and not r["socket_errors"] for r in results["runs"].values())
    results["all_200"] = all_200
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(results, indent=2))
    print(f"{ROUNDS} rounds of {bench.DURATION} at {CONNECTIONS} connections, medians")
    print(f"{'target':<20}{'req/s':>8}{'x plain':>9}{'p99 ms':>8}{'cpu us':>8}{'redis us':>9}"
          "  non-2xx  x plain per round")  # fmt: skip
    for label, run in results["runs"].items():
        print(
            f"{label:<20}{run['rps']:>8.0f}{run['ratio_to_standalone']:>9.2f}"
            f"{run['p99_ms']:>8.2f}{run['cpu_us_per_request']:>8.0f}"
            f"{run['redis_cpu_us_per_request']:>9.0f}  {run['non_2xx']:>7}"
            f"  {run['ratio_to_standalone_per_round']}"
        )
    print("all 200:", all_200)
    return 0 if all_200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
