"""Every metric of SPEC section 8, built once on an injected registry."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# From a 5 ms cache hit to a 180 s scrape, roughly x2.5 per step.
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 180)
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


def exposition(registry: CollectorRegistry) -> bytes:
    """The /metrics body: this process's registry, or under workers the sum of all of them."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory:
        aggregated = CollectorRegistry()
        multiprocess.MultiProcessCollector(aggregated, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(aggregated)
    return generate_latest(registry)


@dataclass(frozen=True, slots=True)
class RouteMetrics:
    """The label children of one route, bound once."""

    upstream_duration: Any
    credits_charged: Any


class Metrics:
    """The gateway's instruments; one instance per process, passed to whoever counts."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        # Label children looked up once per label set, not per request.
        self._request_children: dict[tuple[str, int, str], Any] = {}
        self._duration_children: dict[str, Any] = {}
        self._routes: dict[str, RouteMetrics] = {}
        r = self.registry
        self.requests = Counter(
            "gateway_requests_total",
            "Requests by route, HTTP status and outcome",
            ["route", "code", "outcome"],
            registry=r,
        )
        self.request_duration = Histogram(
            "gateway_request_duration_seconds",
            "Time from request start to response",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.upstream_duration = Histogram(
            "gateway_upstream_duration_seconds",
            "Time spent waiting on the upstream",
            ["route"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self.credits_charged = Counter(
            "gateway_credits_charged_total",
            "Credits charged",
            ["route"],
            registry=r,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests",
            "Requests holding a lease in this process",
            registry=r,
        )
        self.store_duration = Histogram(
            "gateway_store_duration_seconds",
            "Store round trip time",
            ["op"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Store calls that failed",
            ["op"],
            registry=r,
        )
        self.leases_reclaimed = Counter(
            "gateway_leases_reclaimed_total",
            "Expired leases reclaimed at admission",
            registry=r,
        )
        self.settlements_pending = Gauge(
            "gateway_settlements_pending",
            "Settlements waiting to reach the store",
            registry=r,
        )
        # Only counted when the catalog says metrics.per_org: true (one series per org).
        self.org_requests = Counter(
            "gateway_org_requests_total",
            "Requests by organization and outcome",
            ["org", "outcome"],
            registry=r,
        )
        self.org_credits_charged = Counter(
            "gateway_org_credits_charged_total",
            "Credits charged by organization",
            ["org"],
            registry=r,
        )
        self.config_reloads = Counter(
            "gateway_config_reloads_total",
            "Catalog reloads by result",
            ["result"],
            registry=r,
        )
        self.webhook_deliveries = Counter(
            "gateway_webhook_deliveries_total",
            "Webhook delivery attempts by result: ok, retry (failed, tried again later), "
            "failed (the last attempt failed)",
            ["result"],
            registry=r,
        )
        self.config_last_reload = Gauge(
            "gateway_config_last_reload_timestamp_seconds",
            "When the catalog last loaded",
            registry=r,
        )

        # Queues (SPEC 10). gateway_async_queued is read from the store at scrape (admin.py).
        self.async_tasks = Counter(
            "gateway_async_tasks_total",
            "Async tasks by type and outcome (created, completed, failed, canceled)",
            ["task_type", "outcome"],
            registry=r,
        )
        self.async_dispatch = Histogram(
            "gateway_async_dispatch_seconds",
            "Time from a task's creation or its slot's release to its upstream call",
            buckets=(*STORE_BUCKETS, 2.5, 5, 10),
            registry=r,
        )
        self.queue_wait = Histogram(
            "gateway_queue_wait_seconds",
            "Time sync requests waited for a concurrency slot",
            buckets=REQUEST_BUCKETS,
            registry=r,
        )

    def count_request(self, route: str, status: int, outcome: str, seconds: float) -> None:
        """One finished request of the public listener."""
        key = (route, status, outcome)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status), outcome)
        child.inc()
        duration = self._duration_children.get(route)
        if duration is None:
            duration = self._duration_children[route] = self.request_duration.labels(route)
        duration.observe(seconds)

    def per_route(self, route: str) -> RouteMetrics:
        bound = self._routes.get(route)
        if bound is None:
            bound = self._routes[route] = RouteMetrics(
                self.upstream_duration.labels(route), self.credits_charged.labels(route)
            )
        return bound
