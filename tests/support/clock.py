"""A gateway clock that runs at real speed from a chosen instant and can jump forward."""

from __future__ import annotations

import time
from datetime import datetime, timedelta


class MovableClock:
    def __init__(self, start: datetime) -> None:
        self._start = start
        self._began = time.monotonic()
        self._jumped = timedelta()

    def __call__(self) -> datetime:
        return self._start + timedelta(seconds=time.monotonic() - self._began) + self._jumped

    def jump(self, delta: timedelta) -> None:
        self._jumped += delta
