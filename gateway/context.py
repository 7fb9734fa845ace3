"""What a running gateway holds, and the typed keys that reach it from a request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from gateway.accesslog import AccessLog
from gateway.catalog.live import LiveCatalog
from gateway.catalog.models import Catalog
from gateway.clock import Clock, to_ms
from gateway.metrics import Metrics
from gateway.proxy.auth import KeyCache
from gateway.proxy.http1 import UpstreamClient
from gateway.proxy.leases import InFlight
from gateway.proxy.pricebooks import PriceBooks
from gateway.settings import Settings
from gateway.store.accounts import Accounts
from gateway.store.billing import Billing
from gateway.store.ledger import Identity, Ledger
from gateway.store.spool import Spool

if TYPE_CHECKING:
    from gateway.queue.dispatcher import Dispatcher


@dataclass
class Gateway:
    """The process's dependencies, built once by create_apps and shared by both listeners."""

    settings: Settings
    catalog: LiveCatalog
    client: Any
    metrics: Metrics
    clock: Clock
    ledger: Ledger
    accounts: Accounts
    keys: KeyCache
    inflight: InFlight
    billing: Billing
    pricebooks: PriceBooks
    spool: Spool
    access_log: AccessLog
    # Applied to every catalog loaded from disk (the demo points upstreams at itself).
    prepare_catalog: Callable[[Catalog], Catalog] = field(default=lambda catalog: catalog)
    http: UpstreamClient = field(init=False)
    # The queues' side of this process (SPEC 10), set by build_gateway.
    dispatcher: Dispatcher = field(init=False)
    # Set when shutdown starts: requests cancelled from then on are released, never charged.
    draining: bool = field(default=False, init=False)

    def now_ms(self) -> int:
        return to_ms(self.clock())


GATEWAY = web.AppKey("gateway", Gateway)

# Per-request values the middleware reads after the handler.
REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)  # time.perf_counter() when the request arrived
ROUTE = web.RequestKey("route", str)
WHO = web.RequestKey("who", Identity)
OUTCOME = web.RequestKey("outcome", str)
TRACKING = web.RequestKey("tracking", dict)
UPSTREAM_SECONDS = web.RequestKey("upstream_seconds", float)
CHARGED = web.RequestKey("charged", int)
# Seconds a request that found its org full was granted to wait for a slot (SPEC 10).
WAITED = web.RequestKey("waited", int)
