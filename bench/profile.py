"""`make profile`: where one gateway process spends its CPU under load, sampled by py-spy.

The bench's stack (a private redis-server, nginx answering `return 200` with ~1 KB of JSON),
one gateway with its shipped defaults (access log at INFO, to a file), wrk at 64 connections.
py-spy attaches to the loaded gateway for PROFILE_SECONDS (default 20) at PROFILE_RATE samples
a second (default 250), and only samples the process while it runs (not while the event loop
waits), so the shares below are shares of its CPU time.

Prints the top entries: functions by their own time (the frame on top of the stack) and by
the time under them (inclusive). Writes the raw stacks to bench/results/profile.txt, for
`py-spy`'s other views or a flame graph. PROFILE_ENV adds settings to the gateway's
environment (`PROFILE_ENV=GATEWAY_LOG_LEVEL=WARNING`, say); PROFILE_COMMIT profiles the build
of another commit (unpacked with `git archive`, as `make bench-steps` does).

The gateway gets CPU 1 to itself and everything else (wrk, Redis, nginx, py-spy) shares CPU 0
(PROFILE_PIN=0 to leave them be): py-spy counts a thread that is runnable but preempted as
running, so on two shared cores every write that wakes a peer would look costly."""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import run as bench  # noqa: E402
import steps  # noqa: E402

from tests.support.redis_server import RedisServer, free_port  # noqa: E402

SECONDS = int(os.environ.get("PROFILE_SECONDS", "20"))
RATE = int(os.environ.get("PROFILE_RATE", "250"))
PIN = os.environ.get("PROFILE_PIN", "1") == "1"
TOP = int(os.environ.get("PROFILE_TOP", "25"))
PY_SPY = str(Path(sys.executable).with_name("py-spy"))
# `name (path/to/file.py:123)`: the line number dropped, the path cut to its package.
FRAME = re.compile(r"^(?P<name>.*) \((?P<file>.*?)(?::\d+)?\)$")


def short(frame: str) -> str:
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "/lib/python3", "/wt-", "/work/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    path = re.sub(r"^[^/]*/(gateway/)", r"\1", path)  # this checkout's name
    path = re.sub(r"^\.\d+/", "", path)  # the standard library's version
    return f"{match['name']} ({path})"


def summarize(raw: Path) -> str:
    """Own time by function and by file, and inclusive time by function. A coroutine that the
    loop resumes is sampled from its own frame up, without its awaiting callers: inclusive
    figures of the outer coroutines are lower bounds; own time is exact."""
    own: collections.Counter[str] = collections.Counter()
    own_file: collections.Counter[str] = collections.Counter()
    under: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = [short(f) for f in stack.split(";")]
        total += n
        own[frames[-1]] += n
        own_file[frames[-1].rsplit(" (", 1)[-1].rstrip(")")] += n
        for frame in set(frames):
            under[frame] += n
    out = [f"{total} samples ({SECONDS} s at {RATE}/s while running)", "", "own time:"]
    out += [f"{n / total:6.1%}  {frame}" for frame, n in own.most_common(TOP)]
    out += ["", "own time by file:"]
    out += [f"{n / total:6.1%}  {path}" for path, n in own_file.most_common(TOP)]
    out += ["", "inclusive:"]
    out += [f"{n / total:6.1%}  {frame}" for frame, n in under.most_common(TOP * 2)]
    return "\n".join(out)


def main() -> int:
    if len(sys.argv) > 1:  # `profile.py RAW`: summarize a raw file again
        print(summarize(Path(sys.argv[1])))
        return 0
    if PIN:
        os.sched_setaffinity(0, {0})  # inherited by every process started from here
    stack = bench.Stack()
    redis_server = RedisServer().start()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    raw = out_dir / "profile.txt"
    try:
        upstream, _ = stack.nginx_upstream()
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
        port, admin_port = free_port(), free_port()
        extra = dict(
            item.split("=", 1) for item in os.environ.get("PROFILE_ENV", "").split() if item
        )
        os.environ.update(extra)  # the gateway's environment is this process's, plus its own
        commit = os.environ.get("PROFILE_COMMIT")
        tree = steps.checkout(commit, stack.dir / "build") if commit else ROOT
        proc = stack.gateway(catalog, redis_server.url, port, admin_port, tree=tree)
        bench.wait_http(f"http://127.0.0.1:{admin_port}/healthz")
        if PIN:
            for task in os.listdir(f"/proc/{proc.pid}/task"):  # every thread of it
                os.sched_setaffinity(int(task), {1})
        account = bench.admin(admin_port, "/admin/accounts", {"name": "p", "plan": "bench"})
        key = bench.admin(admin_port, f"/admin/orgs/{account['org_id']}/keys")["key"]
        url = f"http://127.0.0.1:{port}{bench.PATH}"
        env = {**os.environ, "BENCH_KEY": key}
        script = str(ROOT / "bench/post.lua")
        subprocess.run(["wrk", "-t1", "-c4", "-d2s", "-s", script, url], env=env, check=True)
        load = subprocess.Popen(
            ["wrk", "-t2", "-c64", f"-d{SECONDS + 3}s", "-s", script, url],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        record = [PY_SPY, "record", "--pid", str(proc.pid), "--duration", str(SECONDS)]
        record += ["--rate", str(RATE), "--format", "raw", "--output", str(raw), "--nonblocking"]
        subprocess.run(record, check=True, capture_output=True)
        print(load.communicate()[0])
    finally:
        stack.stop()
        redis_server.stop()
    print(summarize(raw))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
