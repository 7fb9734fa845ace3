"""A gateway clock that runs at real speed from a chosen instant and can jump forward."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

# For boundary tests: the gateway's clock starts 2 s before the monthly anniversary of ANCHOR
# (cycle 02-15 -> 03-15 10:00), so accounts anchored there cross a boundary mid-test.
NOW = datetime(2026, 3, 15, 9, 59, 58, tzinfo=UTC)
ANCHOR = datetime(2026, 2, 15, 10, 0, 0, tzinfo=UTC)


class MovableClock:
    def __init__(self, start: datetime) -> None:
        self._start = start
        self._began = time.monotonic()
        self._jumped = timedelta()

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._began) + self._jumped

    def jump(self, delta: timedelta) -> None:
        self._jumped += delta
