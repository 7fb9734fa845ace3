"""`gateway serve` as a real process, for signals, workers and logs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from tests.support.harness import ADMIN_TOKEN, DATA
from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def write_catalog(path: Path, upstream_url: str, **changes: object) -> Path:
    """The test catalog pointed at `upstream_url`, with top-level sections replaced."""
    data = yaml.safe_load((DATA / "catalog.yaml").read_text())
    data["upstreams"]["scrapers"]["url"] = upstream_url
    data.update(changes)
    path.write_text(yaml.safe_dump(data))
    return path


def set_price(path: Path, route: str, base: int) -> None:
    data = yaml.safe_load(path.read_text())
    for item in data["routes"]:
        if item.get("path") == route:
            item["price"] = {"base": base}
    path.write_text(yaml.safe_dump(data))


@dataclass
class GatewayProcess:
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int
    log_path: Path

    @property
    def public(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        return self.process.wait(timeout=timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_process(
    catalog: Path, redis_url: str, tmp: Path, *args: str, env: dict[str, str] | None = None
) -> GatewayProcess:
    port, admin_port = free_port(), free_port()
    log_path = tmp / f"gateway-{port}.log"
    environment = {
        **os.environ,
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_LOG_FORMAT": "json",
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--config",
                str(catalog),
                "--port",
                str(port),
                "--admin-port",
                str(admin_port),
                "--redis-url",
                redis_url,
                *args,
            ],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    running = GatewayProcess(process, port, admin_port, log_path)
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{running.admin}/healthz", timeout=1).read()
            # The public listener too (workers bind both before answering).
            urllib.request.urlopen(f"{running.public}/nowhere", timeout=1)
        except urllib.error.HTTPError:
            return running
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                running.stop()
                raise RuntimeError(f"gateway did not start:\n{running.log()}") from None
            time.sleep(0.1)
