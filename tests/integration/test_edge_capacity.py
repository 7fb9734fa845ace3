"""How many idle and slow connections one gateway process holds, at what memory, and that
every one of them is gone by its deadline (SPEC 4: resident memory stays bounded).

One `gateway serve` process (memory:// store) with 2-second deadlines; 2,000 idle
connections, 200 half-sent heads and 300 unauthenticated clients that stop half-way through a
declared body. The figures it prints are in docs/performance.md."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.support.harness import DATA
from tests.support.redis_server import free_port

IDLE, HALF_HEADS, HALF_BODIES = 2000, 200, 300
DEADLINE_S = 2.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def serving() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    catalog = yaml.safe_load((DATA / "catalog.yaml").read_text())
    catalog["limits"] = {
        **catalog.get("limits", {}),
        "client_header_timeout_s": DEADLINE_S,
        "client_body_timeout_s": DEADLINE_S,
        "keepalive_timeout_s": DEADLINE_S,
        "max_request_body_bytes": 1_048_576,
    }
    folder = tempfile.mkdtemp(prefix="gw-capacity-")
    path = Path(folder) / "catalog.yaml"
    path.write_text(yaml.safe_dump(catalog))
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_ADMIN_PORT": str(admin_port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_REDIS_URL": "memory://",
        "GATEWAY_SPOOL_DIR": folder,
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path)], env=env
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", admin_port)) == 0:
                    break
            assert time.monotonic() < deadline and process.poll() is None
            time.sleep(0.1)
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


async def test_thousands_of_idle_and_slow_connections_cost_little_and_all_end(
    serving: tuple[int, subprocess.Popen[bytes]],
) -> None:
    port, process = serving
    baseline = _rss_mib(process.pid)
    opened: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def connect(data: bytes) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if data:
            writer.write(data)
            await writer.drain()
        opened.append((reader, writer))

    body_head = (
        b"POST /v1/monitor/flat HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n"
        + b"x" * 512 * 1024
    )
    started = time.monotonic()
    for batch in range(0, IDLE, 200):
        await asyncio.gather(*(connect(b"") for _ in range(min(200, IDLE - batch))))
    await asyncio.gather(*(connect(b"GET / HTTP/1.1\r\nHost: x\r\n") for _ in range(HALF_HEADS)))
    await asyncio.gather(*(connect(body_head) for _ in range(HALF_BODIES)))
    await asyncio.sleep(0.5)
    held_fds = _open_fds(process.pid)
    peak = _rss_mib(process.pid)
    print(
        f"\n{IDLE} idle + {HALF_HEADS} half heads + {HALF_BODIES} half bodies (512 KiB each sent):"
        f" {held_fds} fds, RSS {baseline:.0f} MiB -> {peak:.0f} MiB"
    )
    # 300 clients each sent half a MiB: buffering those bodies alone would be 150 MiB.
    assert peak - baseline < 60

    async def ends(reader: asyncio.StreamReader) -> None:
        await asyncio.wait_for(reader.read(), 3 * DEADLINE_S + 5)

    await asyncio.gather(*(ends(reader) for reader, _ in opened))
    ended = time.monotonic() - started
    for _, writer in opened:
        writer.close()
    print(f"all {len(opened)} closed by the gateway within {ended:.1f} s")
    assert _open_fds(process.pid) < held_fds - len(opened) + 50
