"""Start and stop private redis-server processes on free loopback ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RedisServer:
    """One redis-server of the test suite's own; never the machine's server on 6379."""

    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    password: str | None = None
    # A directory with ca.pem, cert.pem and key.pem: the server speaks TLS only (tls_files()).
    tls: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="gw-redis-")))

    @property
    def url(self) -> str:
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port,
            password=self.password,
            socket_connect_timeout=0.2,
            decode_responses=True,
            ssl=self.tls is not None,
            ssl_ca_certs=str(self.tls / "ca.pem") if self.tls else None,
        )

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed: run `make test`, which installs it")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                "0" if self.tls else str(self.port),
                *(self._tls_args() if self.tls else ()),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.workdir),
                *(("--requirepass", self.password) if self.password else ()),
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        client = self.client()
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.02)
        client.close()
        assert self.port != 6379
        return self

    def _tls_args(self) -> tuple[str, ...]:
        assert self.tls is not None
        return (
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.tls / "cert.pem"),
            "--tls-key-file", str(self.tls / "key.pem"),
            "--tls-ca-cert-file", str(self.tls / "ca.pem"),
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def flush(self) -> None:
        with self.client() as client:
            client.flushall()

    def halt(self) -> None:
        """Stop the server but keep its directory, so that start() brings its data back
        (when it was started with persistence, e.g. --appendonly yes)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        self.halt()
        shutil.rmtree(self.workdir, ignore_errors=True)


def tls_files(into: Path) -> Path:
    """A test CA and a certificate for 127.0.0.1 signed by it: ca.pem, cert.pem, key.pem."""
    import trustme  # a test extra; only TLS tests need it

    authority = trustme.CA()
    issued = authority.issue_cert("127.0.0.1", "localhost")
    authority.cert_pem.write_to_path(str(into / "ca.pem"))
    issued.cert_chain_pems[0].write_to_path(str(into / "cert.pem"))
    issued.private_key_pem.write_to_path(str(into / "key.pem"))
    return into
