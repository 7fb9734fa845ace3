"""A circuit breaker in front of the store: after repeated failures, fail at once for a while
instead of piling requests on a dead Redis; then let one probe through to see if it is back."""

from __future__ import annotations

import math
import time
from collections.abc import Callable


class Breaker:
    def __init__(
        self,
        *,
        threshold: int = 5,
        cooldown_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._cooldown_s = cooldown_s
        self._monotonic = monotonic
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._opened_at is not None

    def allow(self) -> bool:
        """May a call go to the store now? While open, one probe per cooldown goes through."""
        if self._opened_at is None:
            return True
        if self._probing or self._monotonic() < self._opened_at + self._cooldown_s:
            return False
        self._probing = True
        return True

    def retry_after_s(self) -> int:
        """Whole seconds until the next probe (at least 1), for Retry-After."""
        if self._opened_at is None:
            return 1
        left = self._opened_at + self._cooldown_s - self._monotonic()
        return max(1, math.ceil(left))

    def succeeded(self) -> None:
        self._failures = 0
        self._opened_at = None
        self._probing = False

    def failed(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self._threshold:
            self._opened_at = self._monotonic()
        self._probing = False
