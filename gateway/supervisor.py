"""`--workers N`: N worker processes on the same ports (SO_REUSEPORT) under one parent that
relays SIGHUP and SIGTERM to them and replaces a worker that dies."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

from gateway.reload import SUPERVISED_ENV

log = logging.getLogger(__name__)

METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RESTART_BACKOFF_S = 0.5


class Supervisor:
    def __init__(self, worker_argv: Sequence[str], workers: int) -> None:
        self._argv = list(worker_argv)
        self._count = workers
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._env = dict(os.environ)
        # Every worker writes its metrics here; any worker's /metrics sums them all.
        self._metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
        self._env[METRICS_DIR_ENV] = self._metrics_dir
        self._env[SUPERVISED_ENV] = "1"
        self._env["GATEWAY_WORKERS"] = "1"

    def run(self) -> int:
        signal.signal(signal.SIGHUP, self._relay)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        for _ in range(self._count):
            self._spawn()
        while not self._stopping:
            self._replace_dead()
            time.sleep(0.2)
        code = self._wait_all()
        shutil.rmtree(self._metrics_dir, ignore_errors=True)
        return code

    def _spawn(self) -> None:
        process = subprocess.Popen([sys.executable, "-m", "gateway", *self._argv], env=self._env)
        self._workers[process.pid] = process
        log.info("worker started", extra={"pid": process.pid})
        if self._stopping:  # SIGTERM came while this one was being started
            process.send_signal(signal.SIGTERM)

    def _replace_dead(self) -> None:
        for pid, process in list(self._workers.items()):
            code = process.poll()
            if code is None or self._stopping:
                continue
            del self._workers[pid]
            _forget_metrics(self._metrics_dir, pid)
            log.error("worker died; starting another", extra={"pid": pid, "exit_code": code})
            time.sleep(_RESTART_BACKOFF_S)
            self._spawn()

    def _relay(self, signum: int, frame: FrameType | None) -> None:
        for process in list(self._workers.values()):
            process.send_signal(signum)

    def _stop(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        for process in list(self._workers.values()):
            process.send_signal(signal.SIGTERM)

    def _wait_all(self) -> int:
        worst = 0
        for process in self._workers.values():
            code = process.wait()
            # A worker still importing when told to stop dies of the signal itself: it had
            # accepted nothing, so that is a clean stop too.
            if code != -signal.SIGTERM:
                worst = max(worst, abs(code))
        return worst


def _forget_metrics(directory: str, pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
