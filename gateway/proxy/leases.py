"""In-flight leases of this process and the one task that renews them all."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from gateway.clock import Clock, to_ms
from gateway.errors import StoreError
from gateway.metrics import Metrics
from gateway.store.ledger import Identity, Ledger

log = logging.getLogger(__name__)


class InFlight:
    """Requests of this process that hold a lease, by request id."""

    def __init__(self, metrics: Metrics) -> None:
        self._leases: dict[str, Identity] = {}
        self._gauge = metrics.inflight

    @contextmanager
    def holding(self, who: Identity, request_id: str) -> Iterator[None]:
        self._leases[request_id] = who
        self._gauge.inc()
        try:
            yield
        finally:
            del self._leases[request_id]
            self._gauge.dec()

    def __len__(self) -> int:
        return len(self._leases)

    def snapshot(self) -> list[tuple[Identity, str]]:
        return [(who, request_id) for request_id, who in self._leases.items()]


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
