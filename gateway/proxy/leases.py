"""In-flight leases of this process and the one task that renews them all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from gateway.clock import Clock, to_ms
from gateway.errors import StoreError
from gateway.metrics import Metrics
from gateway.store.ledger import Identity, Ledger

log = logging.getLogger(__name__)


class InFlight:
    """Requests of this process that hold a lease, by request id, with the task serving each."""

    def __init__(self, metrics: Metrics) -> None:
        self._leases: dict[str, tuple[Identity, asyncio.Task[Any] | None]] = {}
        self._gauge = metrics.inflight
        self._idle = asyncio.Event()
        self._idle.set()

    def holding(self, who: Identity, request_id: str) -> _Holding:
        """`with inflight.holding(who, request_id):` the request holds its lease until the
        block ends. (A class, not @contextmanager: this runs on every metered request.)"""
        self._leases[request_id] = (who, asyncio.current_task())
        self._idle.clear()
        self._gauge.inc()
        return _Holding(self, request_id)

    def _release(self, request_id: str) -> None:
        del self._leases[request_id]
        self._gauge.dec()
        if not self._leases:
            self._idle.set()

    def __len__(self) -> int:
        return len(self._leases)

    def snapshot(self) -> list[tuple[Identity, str]]:
        return [(who, request_id) for request_id, (who, _) in self._leases.items()]

    async def drain(self, grace_s: float) -> int:
        """Let in-flight requests finish for up to `grace_s`, then cancel the rest (their
        handlers release the lease uncharged). Returns how many were cancelled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), grace_s)
        left = [task for _, task in self._leases.values() if task is not None]
        for task in left:
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=5)
        return len(left)


class _Holding:
    __slots__ = ("_inflight", "_request_id")

    def __init__(self, inflight: InFlight, request_id: str) -> None:
        self._inflight = inflight
        self._request_id = request_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        self._inflight._release(self._request_id)


async def renew_forever(
    inflight: InFlight, ledger: Ledger, clock: Clock, ttl_s: Callable[[], float]
) -> None:
    """Every third of the lease TTL, push every in-flight lease's expiry a full TTL ahead."""
    while True:
        ttl = ttl_s()
        await asyncio.sleep(ttl / 3)
        leases = inflight.snapshot()
        if not leases:
            continue
        try:
            await ledger.renew(leases, to_ms(clock()) + int(ttl * 1000))
        except StoreError as exc:
            # The next round tries again; a lease only lapses after a whole TTL without one.
            log.warning("lease renewal failed: %s", exc)
