"""The access log (SPEC 8): one line per request of the public listener, without a logging
record or a syscall per request.

Lines are encoded at once (orjson, or a short template for `text`) into one buffer, which is
written when it passes FLUSH_BYTES and otherwise FLUSH_S after its first line at the latest; on
drain (the public app's cleanup) and at exit. A crash loses at most the last FLUSH_S of lines.
The line has the fields and names the JSON formatter of gateway/logs.py gives any record."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import select
import stat
import time
from typing import Literal

import orjson

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024
FLUSH_S = 0.1
# A write to a pipe of at most PIPE_BUF bytes is atomic: lines of the workers that share one
# stderr never interleave mid-line. Regular files get the whole buffer in one write.
PIPE_CHUNK = select.PIPE_BUF
FILE_CHUNK = 1024 * 1024
LOGGER = "gateway.access"
STDERR = "-"
OFF = "off"


class AccessLog:
    """Buffered access lines to `destination`: a file path (opened for appending), "-" for
    stderr, "off" for none. Disabled too when `level` is above INFO."""

    def __init__(
        self, destination: str, *, level: str = "INFO", fmt: Literal["json", "text"] = "json"
    ) -> None:
        levels = logging.getLevelNamesMapping()
        self.enabled = (
            destination != OFF and levels.get(level.upper(), logging.INFO) <= logging.INFO
        )
        self.destination = destination
        self._text = fmt == "text"
        self._buffer = bytearray()
        self._fd: int | None = None
        self._chunk = FILE_CHUNK
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False
        self._second = self._ms = -1
        self._stamp_prefix = self._stamp_text = ""

    def open(self) -> None:
        """Open the destination and start timing flushes on the running loop, if any."""
        if not self.enabled:
            return
        with contextlib.suppress(RuntimeError):
            self._loop = asyncio.get_running_loop()
        self._open_fd()
        atexit.register(self.close)

    def write(
        self,
        *,
        request_id: str,
        method: str,
        route: str,
        status: int,
        outcome: str,
        credits: int,
        account: str | None,
        org: str | None,
        seconds: float,
        upstream_seconds: float | None,
    ) -> None:
        """Add one request's line; it reaches the destination within FLUSH_S. Encoded now
        (a few microseconds), so that a flush only writes: encoding a whole batch at once
        would hold up the requests that arrive meanwhile."""
        stamp = self._stamp(time.time())
        latency_ms = round(seconds * 1000, 1)
        upstream_ms = None if upstream_seconds is None else round(upstream_seconds * 1000, 1)
        if self._text:
            line = (
                f"{stamp} INFO {LOGGER} {method} {route} {status} request_id={request_id} "
                f"account={account} org={org} outcome={outcome} credits={credits} "
                f"latency_ms={latency_ms} upstream_ms={upstream_ms}\n"
            ).encode(errors="backslashreplace")
        else:
            fields = {
                "time": stamp,
                "level": "info",
                "logger": LOGGER,
                "message": f"{method} {route} {status}",
                "request_id": request_id,
                "account": account,
                "org": org,
                "route": route,
                "status": status,
                "outcome": outcome,
                "credits": credits,
                "latency_ms": latency_ms,
                "upstream_ms": upstream_ms,
            }
            try:
                line = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
            except orjson.JSONEncodeError:  # a string orjson refuses (a lone surrogate)
                line = (json.dumps(fields) + "\n").encode()
        buffer = self._buffer
        first = not buffer
        buffer += line
        if len(buffer) >= FLUSH_BYTES:
            self.flush()
        elif first and self._loop is not None:
            self._timer = self._loop.call_later(FLUSH_S, self._timed_flush)

    def flush(self) -> None:
        """Write out what is buffered (blocking, like a logging handler's write)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._buffer:
            return
        data, self._buffer = self._buffer, bytearray()
        if self._fd is None:
            self._open_fd()
        try:
            self._write_all(data)
        except OSError as exc:
            if not self._failing:  # once per outage, not once per batch
                log.error("access log write failed: %s", exc, extra={"path": self.destination})
            self._failing = True
        else:
            self._failing = False

    def reopen(self) -> None:
        """After a rotation (SIGHUP): flush to the old file, then append to a new one."""
        if not self.enabled:
            return
        self.flush()
        self._close_fd()
        self._open_fd()

    def close(self) -> None:
        """Flush and close; safe to call twice (the app's cleanup, then atexit)."""
        self.flush()
        self._close_fd()
        atexit.unregister(self.close)
        self._loop = None

    def _timed_flush(self) -> None:
        self._timer = None
        self.flush()

    def _stamp(self, now: float) -> str:
        """UTC ISO 8601 to the millisecond, as gateway.clock.iso writes it; formatted once a
        millisecond (a busy gateway writes several lines in one), its date and time of day
        once a second."""
        ms = int(now * 1000)
        if ms != self._ms:
            second, milli = divmod(ms, 1000)
            if second != self._second:
                self._second = second
                self._stamp_prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._ms = ms
            self._stamp_text = f"{self._stamp_prefix}.{milli:03d}Z"
        return self._stamp_text

    def _open_fd(self) -> None:
        if self.destination == STDERR:
            self._fd = 2
        else:
            self._fd = os.open(self.destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        mode = os.fstat(self._fd).st_mode
        self._chunk = FILE_CHUNK if stat.S_ISREG(mode) else PIPE_CHUNK

    def _close_fd(self) -> None:
        if self._fd is not None and self._fd != 2:
            os.close(self._fd)
        self._fd = None

    def _write_all(self, data: bytearray) -> None:
        """Write whole lines, at most one chunk at a time (a longer line goes alone)."""
        assert self._fd is not None
        view = memoryview(data)
        start, end = 0, len(data)
        while start < end:
            stop = end
            if end - start > self._chunk:
                cut = data.rfind(b"\n", start, start + self._chunk)
                stop = cut + 1 if cut >= 0 else data.find(b"\n", start) + 1 or end
            while start < stop:
                start += os.write(self._fd, view[start:stop])
