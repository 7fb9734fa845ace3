"""`make bench`: one load generator (wrk) against, in one run:

1. the upstream directly, 2. nginx with proxy_pass, 3. a bare aiohttp reverse proxy (the
baseline), 4. gateway with full metering and its shipped defaults (JSON access log at INFO,
written to a file), 1 worker and 2 workers, on a private redis-server, 5. the same 1-worker
gateway with the access log off (GATEWAY_LOG_LEVEL=WARNING): what the log costs;

at 64 connections and at 1 connection, reporting req/s, p50, p99, the ratio to the bare proxy,
CPU time per request of the proxy's processes (and of Redis), and Redis commands per request
(INFO commandstats). The upstream is nginx answering `return 200` with ~1 KB of JSON over
keep-alive: it costs next to nothing, so the proxies' own cost is what the ratios compare (a
Python upstream on the same two cores capped the bare proxy and the gateway alike). The
targets take turns for BENCH_ROUNDS rounds and each figure is the median of its rounds: this
box is shared and its speed drifts by tens of percent within minutes, which one run per target
would read as a difference between targets. Then many concurrent slow requests (a Python
upstream that holds them) through one gateway process: errors and resident memory per request.

Writes bench/results/latest.json and prints a table. Speed is reported, never asserted; the run
fails only on its sanity checks: every response 200, credits charged = requests x price, one
access line per request the gateway counted."""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

PY = sys.executable
DURATION = os.environ.get("BENCH_DURATION", "8s")
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
# 10,000 in flight needs 20,000 sockets in the gateway (client + upstream side); this sandbox's
# hard limit on open files is 20,000, so the default stays just under it.
SLOW_REQUESTS = int(os.environ.get("BENCH_SLOW_REQUESTS", "9900"))
RAMP_S = 6.0
PRICE = 7
TOKEN = "bench-token"
PATH = "/v1/monitor/chatgpt"
SLOW_PATH = "/v1/monitor/slow"  # to the Python upstream, which can hold a request
CATALOG = """
upstreams:
  scrapers: {{url: "{upstream}", timeout_s: 30, connect_timeout_s: 5}}
  slow: {{url: "{slow_upstream}", timeout_s: 30, connect_timeout_s: 5}}
routes:
  - path: {path}
    methods: [POST]
    upstream: scrapers
    price: {{base: {price}}}
  - path: {slow_path}
    methods: [POST]
    upstream: slow
    price: {{base: {price}}}
plans:
  bench: {{price_cents: 100, credits: 1000000000, concurrency: 20000, rate_limit_rps: 1000000}}
limits: {{lease_ttl_s: 30, max_request_body_bytes: 1048576, charge_on_client_cancel: true,
         shutdown_grace_s: 5}}
"""
# One nginx process each (`daemon off`, one worker), with a config of its own in the run's
# temporary directory. Keep-alive connections are never closed for their request count.
NGINX = """
worker_processes 1;
pid {dir}/{name}.pid;
error_log {dir}/{name}-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  keepalive_requests 100000000;
  client_body_temp_path {dir}/{name}-body;
  proxy_temp_path {dir}/{name}-proxy;
  fastcgi_temp_path {dir}/{name}-fastcgi;
  uwsgi_temp_path {dir}/{name}-uwsgi;
  scgi_temp_path {dir}/{name}-scgi;
  {upstreams}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      {location}
    }}
  }}
}}
"""
# The upstream: ~1 KB of JSON (the same body as bench/upstream.py) on every path, at once.
NGINX_UPSTREAM = "default_type application/json; return 200 '{body}';"
NGINX_PROXY = "proxy_pass http://scrapers; proxy_http_version 1.1; proxy_set_header Connection '';"


def upstream_body() -> str:
    from bench.upstream import BODY

    text = BODY.decode()
    assert "'" not in text and "$" not in text and "\\" not in text  # as nginx reads it
    return text


def wait_http(url: str, timeout: float = 30) -> None:
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


def admin(port: int, path: str, body: dict[str, Any] | None = None, method: str = "POST") -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        method=method,
        data=None if method == "GET" else json.dumps(body or {}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    return json.loads(urllib.request.urlopen(request).read())


def wrk(url: str, connections: int, key: str) -> dict[str, Any]:
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
    match = re.search(rf"{re.escape(pct)}\s+([\d.]+)(us|ms|s)\b", out)
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


def family(pid: int) -> list[int]:
    """A process and its children (the workers of a supervisor)."""
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [pid, *map(int, children.split())]


def rss_kb(pid: int) -> int:
    """Resident memory of a process and its children (workers), in KB."""
    total = 0
    for p in family(pid):
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds used so far by these processes."""
    ticks = 0
    for p in pids:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


async def hold_many(url: str, key: str, count: int, gateway_pid: int) -> dict[str, Any]:
    """`count` concurrent slow requests through one gateway: errors and memory per request.

    They arrive over RAMP_S seconds (a 2-core box admits a few thousand a second) and the
    upstream holds every one of them until 2 s after the last has arrived, so that at the peak
    all of them are in flight through the one process at once."""
    idle = rss_kb(gateway_pid)
    peak = idle
    errors: dict[str, int] = {}
    statuses: dict[int, int] = {}
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        release = time.time() + RAMP_S + 2

        async def one(delay: float) -> None:
            await asyncio.sleep(delay)
            try:
                async with http.post(
                    f"{url}?until={release}",
                    headers={"Authorization": f"Bearer {key}"},
                    json={"prompt": "x"},
                ) as reply:
                    body = await reply.read()
                    statuses[reply.status] = statuses.get(reply.status, 0) + 1
                    if reply.status != 200:
                        why = json.loads(body)["error"]["message"][:80]
                        errors[why] = errors.get(why, 0) + 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1

        tasks = [asyncio.create_task(one(RAMP_S * i / count)) for i in range(count)]
        started = time.monotonic()
        while not all(t.done() for t in tasks):
            peak = max(peak, rss_kb(gateway_pid))
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
    return {
        "requests": count,
        "statuses": statuses,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "gateway_rss_idle_kb": idle,
        "gateway_rss_peak_kb": peak,
        "kb_per_in_flight_request": round((peak - idle) / count, 2),
    }


def measure(
    name: str, url: str, connections: int, key: str, pid: int, redis_server: RedisServer
) -> dict[str, Any]:
    """One wrk run, with the CPU the target (and Redis) spent per request during it."""
    subprocess.run(
        ["redis-cli", "-p", str(redis_server.port), "config", "resetstat"],
        check=True,
        capture_output=True,
    )
    pids = family(pid)
    redis_pid = [redis_server.process.pid]
    before, redis_before = cpu_s(pids), cpu_s(redis_pid)
    run = wrk(url, connections, key)
    run["cpu_us_per_request"] = round((cpu_s(pids) - before) / run["requests"] * 1e6, 1)
    run["redis_cpu_us_per_request"] = round(
        (cpu_s(redis_pid) - redis_before) / run["requests"] * 1e6, 1
    )
    if name.startswith("gateway"):
        stats = commandstats(redis_server.port)
        stats.pop("config|resetstat", None)
        run["redis_calls_per_request"] = {
            cmd: round(n / run["requests"], 3) for cmd, n in sorted(stats.items())
        }
    return run


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over the rounds; counts are summed, the rounds kept."""
    out: dict[str, Any] = {"rounds": runs}
    for field in ("rps", "p50_ms", "p99_ms", "cpu_us_per_request", "redis_cpu_us_per_request"):
        out[field] = statistics.median(run[field] for run in runs)
    out["requests"] = sum(run["requests"] for run in runs)
    out["non_2xx"] = sum(run["non_2xx"] for run in runs)
    out["socket_errors"] = [run["socket_errors"] for run in runs if run["socket_errors"]]
    if "redis_calls_per_request" in runs[-1]:
        out["redis_calls_per_request"] = runs[-1]["redis_calls_per_request"]
    return out


class Stack:
    """The processes of one bench run, stopped together."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[subprocess.Popen[bytes], Path] = {}  # each process's stdout and stderr
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-bench-"))

    def spawn(
        self, *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        path = self.dir / f"proc-{len(self.procs)}.log"
        with path.open("wb") as log:
            proc = subprocess.Popen(
                list(args),
                cwd=cwd,
                env=env or dict(os.environ),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc] = path
        return proc

    def gateway(
        self,
        catalog: Path,
        redis_url: str,
        port: int,
        admin_port: int,
        *,
        workers: int = 1,
        tree: Path = ROOT,
        log: bool = True,
    ) -> subprocess.Popen[bytes]:
        """`gateway serve` of the build in `tree` (this checkout unless told otherwise), with
        its shipped settings: the access log at INFO, written to access-<port>.log (a build
        older than GATEWAY_ACCESS_LOG writes it to its stderr, proc-<n>.log). `log=False`:
        GATEWAY_LOG_LEVEL=WARNING, no access lines."""
        env = {
            **os.environ,
            "GATEWAY_ADMIN_TOKEN": TOKEN,
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_SPOOL_DIR": str(self.dir / f"spool-{port}"),
            "GATEWAY_ACCESS_LOG": str(self.dir / f"access-{port}.log"),
        }
        if not log:
            env["GATEWAY_LOG_LEVEL"] = "WARNING"
        return self.spawn(
            PY, "-m", "gateway", "serve", "--config", str(catalog),
            "--port", str(port), "--admin-port", str(admin_port),
            "--redis-url", redis_url, "--workers", str(workers),
            env=env, cwd=tree,
        )  # fmt: skip

    def nginx(self, name: str, port: int, location: str, upstreams: str = "") -> int:
        """An nginx of its own on `port`; returns the master's pid (its worker is a child)."""
        conf = self.dir / f"{name}.conf"
        conf.write_text(
            NGINX.format(dir=self.dir, name=name, port=port, location=location, upstreams=upstreams)
        )
        proc = self.spawn("nginx", "-p", str(self.dir), "-c", str(conf), "-g", "daemon off;")
        return proc.pid

    def nginx_upstream(self) -> tuple[str, int]:
        """The near-free upstream: its URL and pid."""
        port = free_port()
        pid = self.nginx("upstream", port, NGINX_UPSTREAM.format(body=upstream_body()))
        wait_http(f"http://127.0.0.1:{port}/healthz")
        return f"http://127.0.0.1:{port}", pid

    def halt(self) -> None:
        """SIGTERM to every process (gateways drain and flush their logs), then wait."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.dir, ignore_errors=True)


def access_lines(directory: Path, port: int, proc_log: Path) -> int:
    """Access lines a stopped gateway wrote: to its access log file, or to its stderr."""
    count = 0
    for path in (directory / f"access-{port}.log", proc_log):
        if path.exists():
            with path.open("rb") as lines:
                count += sum(1 for line in lines if b'"gateway.access"' in line)
    return count


def requests_counted(admin_port: int) -> int:
    """gateway_requests_total of a gateway, all labels summed."""
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/metrics") as reply:
        text = reply.read().decode()
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("gateway_requests_total{")
        )
    )


GATEWAYS = ("gateway_1w", "gateway_1w_nolog", "gateway_2w")
TARGETS = ("upstream", "nginx", "bare_proxy", *GATEWAYS)


def main() -> int:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    stack = Stack()
    redis_server = RedisServer().start()
    results: dict[str, Any] = {"duration": DURATION, "runs": {}}
    ports = {name: (free_port(), free_port()) for name in GATEWAYS}
    try:
        slow_port, nginx_port, bare = free_port(), free_port(), free_port()
        upstream, upstream_pid = stack.nginx_upstream()
        slow_upstream = f"http://127.0.0.1:{slow_port}"
        procs = {"upstream": upstream_pid}
        stack.spawn(PY, str(ROOT / "bench/upstream.py"), str(slow_port))
        procs["bare_proxy"] = stack.spawn(
            PY, str(ROOT / "bench/bare_proxy.py"), str(bare), upstream
        ).pid
        procs["nginx"] = stack.nginx(
            "proxy",
            nginx_port,
            NGINX_PROXY,
            upstreams=f"upstream scrapers {{ server {upstream[7:]}; keepalive 128; }}",
        )
        catalog = stack.dir / "bench.yaml"
        catalog.write_text(
            CATALOG.format(
                upstream=upstream,
                slow_upstream=slow_upstream,
                price=PRICE,
                path=PATH,
                slow_path=SLOW_PATH,
            )
        )
        gateways = {
            name: stack.gateway(
                catalog,
                redis_server.url,
                *ports[name],
                workers=2 if name == "gateway_2w" else 1,
                log=not name.endswith("_nolog"),
            )
            for name in GATEWAYS
        }
        procs.update((name, proc.pid) for name, proc in gateways.items())
        for port in (slow_port, bare, nginx_port, *(admin for _, admin in ports.values())):
            wait_http(f"http://127.0.0.1:{port}/healthz")
        wait_http(f"http://127.0.0.1:{ports['gateway_2w'][0]}/nowhere")
        gw1, gw1_admin = ports["gateway_1w"]
        account = admin(gw1_admin, "/admin/accounts", {"name": "bench", "plan": "bench"})
        key = admin(gw1_admin, f"/admin/orgs/{account['org_id']}/keys")["key"]

        targets = {
            "upstream": f"{upstream}{PATH}",
            "nginx": f"http://127.0.0.1:{nginx_port}{PATH}",
            "bare_proxy": f"http://127.0.0.1:{bare}{PATH}",
            **{name: f"http://127.0.0.1:{ports[name][0]}{PATH}" for name in GATEWAYS},
        }
        for name in GATEWAYS:  # warm the key caches of every worker
            subprocess.run(
                ["wrk", "-t1", "-c4", "-d1s", "-s", str(ROOT / "bench/post.lua"), targets[name]],
                env={**os.environ, "BENCH_KEY": key},
                capture_output=True,
                check=True,
            )
        used_before = admin(gw1_admin, f"/admin/accounts/{account['id']}", method="GET")["credits"][
            "used"
        ]
        rounds: dict[str, list[dict[str, Any]]] = {}
        for connections in (64, 1):
            for _ in range(ROUNDS):
                for name, url in targets.items():
                    rounds.setdefault(f"{name}@{connections}", []).append(
                        measure(name, url, connections, key, procs[name], redis_server)
                    )
        results["runs"] = {label: median_run(runs) for label, runs in rounds.items()}
        used = (
            admin(gw1_admin, f"/admin/accounts/{account['id']}", method="GET")["credits"]["used"]
            - used_before
        )
        counted = sum(r["requests"] for n, r in results["runs"].items() if n.startswith("gateway"))
        # wrk stops counting at its deadline with up to one request per connection in flight;
        # the gateway completes (and charges) those, so exactly that much slack is allowed.
        slack = ROUNDS * len(GATEWAYS) * (64 + 1) * PRICE
        results["sanity"] = {
            "all_200": all(
                r["non_2xx"] == 0 and not r["socket_errors"] for r in results["runs"].values()
            ),
            "credits_used": used,
            "counted_requests_x_price": counted * PRICE,
            "max_uncounted": slack,
        }
        results["slow"] = asyncio.run(
            hold_many(
                f"http://127.0.0.1:{gw1}{SLOW_PATH}", key, SLOW_REQUESTS, gateways["gateway_1w"].pid
            )
        )
        gw1_requests = requests_counted(gw1_admin)
        stack.halt()  # SIGTERM: the gateways drain and flush their access logs
        results["sanity"]["access_lines"] = {
            "gateway_1w_requests": gw1_requests,
            "gateway_1w_lines": access_lines(stack.dir, gw1, stack.logs[gateways["gateway_1w"]]),
        }
    finally:
        stack.stop()
        redis_server.stop()

    for c in (64, 1):
        bare_run = results["runs"][f"bare_proxy@{c}"]
        for name in TARGETS:
            run = results["runs"][f"{name}@{c}"]
            run["ratio_to_bare"] = round(run["rps"] / bare_run["rps"], 3)
            # The same round's bare run ran minutes apart at most: its ratio is the paired one.
            run["ratio_to_bare_per_round"] = [
                round(mine["rps"] / bare["rps"], 3)
                for mine, bare in zip(run["rounds"], bare_run["rounds"], strict=True)
            ]
            run["added_p99_ms"] = round(run["p99_ms"] - bare_run["p99_ms"], 3)
            run["cpu_ratio_to_bare"] = round(
                run["cpu_us_per_request"] / bare_run["cpu_us_per_request"], 3
            )
        # What the access log costs: the CPU per request it adds, as a share of the logged
        # gateway's, paired round by round.
        logged, unlogged = (
            results["runs"][f"gateway_1w@{c}"],
            results["runs"][f"gateway_1w_nolog@{c}"],
        )
        shares = [
            (on["cpu_us_per_request"] - off["cpu_us_per_request"]) / on["cpu_us_per_request"]
            for on, off in zip(logged["rounds"], unlogged["rounds"], strict=True)
        ]
        logged["access_log_cpu_share"] = round(statistics.median(shares), 3)
        logged["access_log_cpu_share_per_round"] = [round(x, 3) for x in shares]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"medians of {ROUNDS} rounds of {DURATION} per target")
    print(
        f"{'target':<22}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'x bare':>8}{'+p99 ms':>9}"
        f"{'cpu us/req':>12}{'redis us':>10}  x bare per round"
    )
    for name, run in results["runs"].items():
        print(
            f"{name:<22}{run['rps']:>10.0f}{run['p50_ms']:>9.2f}{run['p99_ms']:>9.2f}"
            f"{run['ratio_to_bare']:>8.2f}{run['added_p99_ms']:>9.2f}"
            f"{run['cpu_us_per_request']:>12.0f}{run['redis_cpu_us_per_request']:>10.0f}"
            f"  {run['ratio_to_bare_per_round']}"
        )
    for c in (64, 1):
        run = results["runs"][f"gateway_1w@{c}"]
        print(
            f"access log @{c}: {run['access_log_cpu_share']:.1%} of gateway_1w's CPU per request"
            f" (per round {run['access_log_cpu_share_per_round']})"
        )
    for name, run in results["runs"].items():
        if "redis_calls_per_request" in run:
            print(f"{name}: Redis calls per request {run['redis_calls_per_request']}")
    print("slow requests:", results["slow"])
    print("sanity:", results["sanity"])
    sanity = results["sanity"]
    extra = sanity["credits_used"] - sanity["counted_requests_x_price"]
    slow_ok = not results["slow"]["errors"] and set(results["slow"]["statuses"]) == {200}
    lines = sanity["access_lines"]
    lines_ok = lines["gateway_1w_lines"] == lines["gateway_1w_requests"]
    ok = sanity["all_200"] and 0 <= extra <= sanity["max_uncounted"] and slow_ok and lines_ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
