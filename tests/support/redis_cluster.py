"""A real three-master Redis Cluster of the suite's own, on free loopback ports."""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis.crc import key_slot

from tests.support.redis_server import RedisServer


def cluster_port() -> int:
    """A free port whose bus port (+10000) is free too; Redis wants it at most 55535."""
    while True:
        port = random.randint(20000, 55535)
        if all(_free(p) for p in (port, port + 10000)):
            return port


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@dataclass
class RedisCluster:
    nodes: list[RedisServer] = field(default_factory=list)
    tls: Path | None = None  # as RedisServer's: every node and the cluster bus speak TLS

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, masters: int = 3, extra_args: tuple[str, ...] = ()) -> RedisCluster:
        """extra_args: e.g. ("--appendonly", "yes"), so that a node restarted with
        `node.halt(); node.start()` comes back with its data (and its nodes.conf)."""
        for _ in range(masters):
            node = RedisServer(
                port=cluster_port(),
                tls=self.tls,
                extra_args=(
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                    *(("--tls-cluster", "yes") if self.tls else ()),
                    *extra_args,
                ),
            )
            self.nodes.append(node.start())
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not installed: run `make test`, which installs it")
        subprocess.run(
            [
                cli,
                *(("--tls", "--cacert", str(self.tls / "ca.pem")) if self.tls else ()),
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in self.nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout_s: float = 30) -> None:
        """Until every node sees the cluster as up (all slots served)."""
        deadline = time.monotonic() + timeout_s
        for node in self.nodes:
            with node.client() as client:
                while client.cluster("info").get("cluster_state") != "ok":
                    if time.monotonic() > deadline:
                        raise RuntimeError("the test cluster did not come up")
                    time.sleep(0.1)

    def master_of(self, key: str) -> RedisServer:
        """The node that serves `key`'s slot now."""
        slot = key_slot(key.encode())
        with self.nodes[0].client() as client:
            for start, end, master, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return next(n for n in self.nodes if n.port == int(master[1]))
        raise LookupError(f"no node serves slot {slot}")

    def flush(self) -> None:
        for node in self.nodes:
            node.flush()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
