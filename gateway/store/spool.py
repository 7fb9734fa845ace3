"""Durable settlements: a settle that could not reach the store is appended to a local file
(fsync'd) and replayed until it lands. Settle is idempotent per request id, so a replay never
charges twice.

Each process appends to its own file and holds an exclusive lock on it while alive; a file
nobody holds belonged to a process that died, and the next process to look adopts it."""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import uuid
from pathlib import Path
from typing import IO, Any, cast

from gateway.metrics import Metrics
from gateway.store.ledger import Identity, SettleOrder

log = logging.getLogger(__name__)


# Lines written before orders carried their price and cycle: they still land while the hold
# exists, as they always did.
_LEGACY: dict[str, Any] = {"price": 0, "cycle": 0}


class Spool:
    def __init__(self, directory: str | Path, metrics: Metrics) -> None:
        self._dir = Path(directory)
        self._gauge = metrics.settlements_pending
        self._pending: dict[str, dict[str, Any]] = {}
        self._file: IO[bytes] | None = None
        self._path: Path | None = None

    def __len__(self) -> int:
        return len(self._pending)

    def pending(self) -> list[tuple[Identity, SettleOrder]]:
        """The settlements still waiting, as settle takes them."""
        return [
            (
                Identity(e["account_id"], e["org_id"], e["key_id"]),
                cast(
                    SettleOrder,
                    {name: e.get(name, _LEGACY.get(name)) for name in SettleOrder.__annotations__},
                ),
            )
            for e in self._pending.values()
        ]

    def add(self, who: Identity, order: SettleOrder) -> None:
        """Append a settlement durably (flushed and fsync'd before returning)."""
        entry = {**order, "account_id": who.account_id, "org_id": who.org_id, "key_id": who.key_id}
        self._append([entry])
        log.warning("settlement spooled", extra={"request_id": order["request_id"]})

    def landed(self, request_id: str) -> None:
        """The settlement reached the store; once none is left, the file is emptied."""
        self._pending.pop(request_id, None)
        self._gauge.set(len(self._pending))
        if not self._pending and self._file is not None:
            self._file.truncate(0)
            self._file.flush()
            os.fsync(self._file.fileno())

    def adopt_orphans(self) -> int:
        """Take over the entries of files whose process is gone. Returns how many."""
        if not self._dir.is_dir():
            return 0
        adopted = 0
        for path in sorted(self._dir.glob("settle-*.jsonl")):
            if path == self._path:
                continue
            with contextlib.suppress(FileNotFoundError), path.open("r+b") as orphan:
                try:
                    fcntl.flock(orphan, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive
                entries = _read(orphan)
                if entries:
                    self._append(entries)
                    adopted += len(entries)
                path.unlink()
        if adopted:
            log.warning("adopted spooled settlements of a dead process", extra={"count": adopted})
        return adopted

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            if not self._pending and self._path is not None:
                self._path.unlink(missing_ok=True)
            self._file = None

    def _append(self, entries: list[dict[str, Any]]) -> None:
        stream = self._open()
        for entry in entries:
            stream.write(json.dumps(entry, separators=(",", ":")).encode() + b"\n")
            self._pending[entry["request_id"]] = entry
        stream.flush()
        os.fsync(stream.fileno())
        self._gauge.set(len(self._pending))

    def _open(self) -> IO[bytes]:
        if self._file is None:
            # Entries hold account ids and kept response bodies: the gateway's user alone
            # reads them (SPEC 1), whatever the umask says.
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.chmod(0o700)
            self._path = self._dir / f"settle-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
            fd = os.open(self._path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchmod(fd, 0o600)
            self._file = os.fdopen(fd, "a+b")
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return self._file


def _read(stream: IO[bytes]) -> list[dict[str, Any]]:
    entries = []
    for line in stream.read().splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:
            # A line cut short by a crash mid-write: its request was never answered as charged.
            log.error("skipping a torn spool line")
    return entries
