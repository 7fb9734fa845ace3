"""`make bench-steps`: what each optimisation changed, measured in one run.

Builds of the gateway at the commits in STEPS (taken from this repository's history with
`git archive`) run side by side, each as one worker with its default settings (access log on)
on the same private redis-server and the same upstream (nginx, `return 200`), next to the bare
aiohttp proxy. wrk takes them in turn, round after round, at 64
connections; the report is each build's median ratio to the bare proxy of the same round, and
its CPU time per request. Sanity: every response 200. Writes bench/results/steps.json."""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

# (commit, what it added); the first is the state before this round of work (issue 14). The
# previous round's steps (b0114dd ... 9346c5f) and their results are in docs/performance.md.
STEPS = [
    ("f0e7cc4", "before: access lines through logging, one write each"),
    ("610277f", "+ access log buffered, orjson, written in batches"),
    ("306cf6a", "+ a body that came with its head read without a timer"),
    ("de4454c", "+ InFlight.holding as a class (and access lines encoded at flush)"),
    ("396b884", "+ a reply whose body came whole sent by a lean response (lines encoded at once)"),
    ("HEAD", "this checkout"),
]
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONNECTIONS = 64


def checkout(commit: str, into: Path) -> Path:
    """The tree of one commit, unpacked; `python -m gateway` run there imports that build."""
    into.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", commit], cwd=ROOT, capture_output=True, check=True
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> int:
    stack = bench.Stack()
    redis_server = RedisServer().start()
    rounds: dict[str, list[dict[str, Any]]] = {}
    try:
        bare = free_port()
        upstream, _ = stack.nginx_upstream()
        bare_pid = stack.spawn(bench.PY, str(ROOT / "bench/bare_proxy.py"), str(bare), upstream).pid
        catalog = stack.dir / "bench.yaml"
        catalog.write_text(
            bench.CATALOG.format(
                upstream=upstream,
                slow_upstream=upstream,
                price=bench.PRICE,
                path=bench.PATH,
                slow_path=bench.SLOW_PATH,
            )
        )
        targets: dict[str, tuple[str, int, str]] = {}  # label -> (url, pid, key)
        bench.wait_http(f"http://127.0.0.1:{bare}/healthz")
        for commit, _ in STEPS:
            tree = checkout(commit, stack.dir / f"build-{commit}")
            port, admin_port = free_port(), free_port()
            proc = stack.gateway(catalog, redis_server.url, port, admin_port, tree=tree)
            bench.wait_http(f"http://127.0.0.1:{admin_port}/healthz")
            account = bench.admin(admin_port, "/admin/accounts", {"name": commit, "plan": "bench"})
            key = bench.admin(admin_port, f"/admin/orgs/{account['org_id']}/keys")["key"]
            targets[commit] = (f"http://127.0.0.1:{port}{bench.PATH}", proc.pid, key)
        targets["bare"] = (f"http://127.0.0.1:{bare}{bench.PATH}", bare_pid, "-")
        for url, _, key in targets.values():  # warm up: key caches, scripts, pools
            subprocess.run(
                ["wrk", "-t1", "-c4", "-d1s", "-s", str(ROOT / "bench/post.lua"), url],
                env={**os.environ, "BENCH_KEY": key},
                capture_output=True,
                check=True,
            )
        for _ in range(ROUNDS):
            for label, (url, pid, key) in targets.items():
                rounds.setdefault(label, []).append(
                    bench.measure(label, url, CONNECTIONS, key, pid, redis_server)
                )
    finally:
        stack.stop()
        redis_server.stop()

    results: dict[str, Any] = {"duration": bench.DURATION, "rounds": ROUNDS, "steps": []}
    for commit, what in STEPS:
        runs = rounds[commit]
        ratios = [
            mine["rps"] / bare["rps"] for mine, bare in zip(runs, rounds["bare"], strict=True)
        ]
        results["steps"].append(
            {
                "commit": commit,
                "what": what,
                "ratio_to_bare": round(statistics.median(ratios), 3),
                "ratio_to_bare_per_round": [round(r, 3) for r in ratios],
                "rps": statistics.median(r["rps"] for r in runs),
                "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
                "redis_cpu_us_per_request": statistics.median(
                    r["redis_cpu_us_per_request"] for r in runs
                ),
            }
        )
    bare_runs = rounds["bare"]
    results["bare"] = {
        "rps": statistics.median(r["rps"] for r in bare_runs),
        "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in bare_runs),
    }
    all_200 = all(r["non_2xx"] == 0 and not r["socket_errors"] for v in rounds.values() for r in v)
    results["all_200"] = all_200
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "steps.json").write_text(json.dumps(results, indent=2))
    print(f"{ROUNDS} rounds of {bench.DURATION} at {CONNECTIONS} connections, medians")
    print(f"bare proxy: {results['bare']['rps']:.0f} req/s, "
          f"{results['bare']['cpu_us_per_request']:.0f} us CPU per request")  # fmt: skip
    print(f"{'commit':<9}{'x bare':>8}{'req/s':>8}{'cpu us':>8}{'redis us':>9}  per round / what")
    for step in results["steps"]:
        print(
            f"{step['commit']:<9}{step['ratio_to_bare']:>8.2f}{step['rps']:>8.0f}"
            f"{step['cpu_us_per_request']:>8.0f}{step['redis_cpu_us_per_request']:>9.0f}"
            f"  {step['ratio_to_bare_per_round']} {step['what']}"
        )
    print("all 200:", all_200)
    return 0 if all_200 else 1


if __name__ == "__main__":
    raise SystemExit(main())
