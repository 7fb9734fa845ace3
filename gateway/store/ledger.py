"""Typed calls on the admission and settlement scripts, each under one outer deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypedDict, TypeVar

from redis.exceptions import RedisClusterException, RedisError

from gateway.errors import StoreError
from gateway.metrics import Metrics
from gateway.store import keys
from gateway.store.batcher import ScriptBatcher
from gateway.store.breaker import Breaker
from gateway.store.cluster_scripts import ClusterScripts
from gateway.store.connect import is_cluster
from gateway.store.scripts import ADMIT, DISPATCH, FINISH, RATE, SETTLE

T = TypeVar("T")


def close_unawaited(awaitable: Awaitable[object]) -> None:
    """Close a coroutine we decided not to run, so Python does not warn about it."""
    close = getattr(awaitable, "close", None)
    if close is not None:
        close()


REQUEST_LOG_LENGTH = 1000
USAGE_RETENTION_S = 400 * 86400
# How long a request reclaimed before it settled stays settleable. A spooled settlement is
# replayed as soon as the store answers, or when a process next starts on its host.
RECLAIMED_MEMORY_MS = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class Identity:
    """Who an API key belongs to. Immutable: a key never moves between orgs."""

    account_id: str
    org_id: str
    key_id: str


@dataclass(frozen=True, slots=True)
class Admission:
    code: str
    rps_limit: int
    rps_remaining: int
    concurrency_limit: int
    concurrency_current: int
    credits_remaining: int
    reclaimed: int
    # The cycle start (ms) an admitted request's hold belongs to, for its settle order; 0 when
    # nothing was held. Where the request is charged, not part of the outcome: not compared.
    cycle_start_ms: int = field(default=0, compare=False)

    @property
    def admitted(self) -> bool:
        return self.code == "OK"


IDEMPOTENCY_TTL_S = 86400


@dataclass(frozen=True, slots=True)
class CallAdmission:
    """A customer-API call as rate.lua counted it."""

    code: str
    rps_limit: int
    rps_remaining: int
    retry_after_s: int


class SettleOrder(TypedDict):
    """What settle needs to know of a finished request; JSON-safe, so it can be spooled."""

    request_id: str
    now_ms: int
    charge: bool
    # What the request was admitted with: its price and cycle start (ms). Settle charges from
    # these when the lease expired before the settle landed (a long outage), so that a spooled
    # success lands whatever became of its hold.
    price: int
    cycle: int
    route: str
    status: int
    latency_ms: int
    # With an Idempotency-Key: its hash, and the response to keep ("-": drop the record).
    idempotency_key: str
    response: str


@dataclass(frozen=True, slots=True)
class Idempotency:
    """A request's Idempotency-Key (hashed) and the hash of what it asks."""

    key_hash: str
    request_hash: str
    in_flight_ttl_s: int


@dataclass(frozen=True, slots=True)
class Settlement:
    applied: bool
    charged: int
    credits_remaining: int
    # The org's waiting sync requests and queued tasks as settle left them: above 0, the slot
    # just freed is wanted (the caller dispatches); 0 costs no further round trip.
    queued: int = field(default=0, compare=False)


class Ledger:
    """The hot path's view of the store: key lookup, admit, settle, lease renewal."""

    def __init__(self, client: Any, metrics: Metrics, timeout_s: float) -> None:
        self.client = client
        self._metrics = metrics
        self._timeout_s = timeout_s
        self._durations = {
            op: metrics.store_duration.labels(op)
            for op in ("lookup", "admit", "settle", "renew", "rate", "queue", "webhooks")
        }
        self._errors = {op: metrics.store_errors.labels(op) for op in self._durations}
        scripts = (ADMIT, SETTLE, DISPATCH, FINISH)
        self.batcher: ScriptBatcher | ClusterScripts = (
            ClusterScripts(client, timeout_s, scripts=scripts)
            if is_cluster(client)
            else ScriptBatcher(client, timeout_s, scripts=scripts)
        )
        self.breaker = Breaker()

    async def call(self, op: str, awaitable: Awaitable[T], *, deadline: bool = True) -> T:
        """Run one store operation under the deadline; failures become StoreError.

        deadline=False for batched script calls: their batch carries the deadline. While the
        breaker is open the call fails at once, without touching Redis."""
        if not self.breaker.allow():
            close_unawaited(awaitable)
            self._errors[op].inc()
            raise StoreError(
                f"{op}: circuit open",
                retry_after_s=self.breaker.retry_after_s(),
                maybe_applied=False,
            )
        started = time.perf_counter()
        try:
            if deadline:
                async with asyncio.timeout(self._timeout_s):
                    result = await awaitable
            else:
                result = await awaitable
        except (RedisError, RedisClusterException, OSError, TimeoutError) as exc:
            self.breaker.failed()
            self._errors[op].inc()
            raise StoreError(f"{op}: {type(exc).__name__}: {exc}") from exc
        self.breaker.succeeded()
        self._durations[op].observe(time.perf_counter() - started)
        return result

    async def lookup_key(self, key_hash: str) -> Identity | None:
        raw = await self.call("lookup", self.client.get(keys.api_key(key_hash)))
        if raw is None:
            return None
        account_id, org_id, key_id = str(raw).split("|")
        return Identity(account_id, org_id, key_id)

    async def admit(
        self,
        who: Identity,
        *,
        request_id: str,
        now_ms: int,
        lease_ttl_ms: int,
        price: int | None,
        enterprise_only: bool,
        pricing_version: str,
        idempotency: Idempotency | None = None,
    ) -> Admission:
        """price None: an unmetered route (rate window only, no lease, no hold)."""
        a = who.account_id
        idem_key = keys.idempotency(a, who.org_id, idempotency.key_hash if idempotency else "-")
        reply = await self.call(
            "admit",
            self.batcher.run(
                ADMIT,
                [
                    keys.account(a),
                    keys.leases(a, who.org_id),
                    keys.holds(a),
                    idem_key,
                    keys.reclaimed(a),
                ],
                [
                    request_id,
                    who.org_id,
                    who.key_id,
                    now_ms,
                    lease_ttl_ms,
                    -1 if price is None else price,
                    1 if enterprise_only else 0,
                    pricing_version,
                    idempotency.request_hash if idempotency else "",
                    idempotency.in_flight_ttl_s if idempotency else 0,
                    RECLAIMED_MEMORY_MS,
                ],
            ),
            deadline=False,
        )
        return Admission(str(reply[0]), *(int(v) for v in reply[1:8]))

    def settle_keys(self, who: Identity, order: SettleOrder) -> list[str]:
        """settle.lua's KEYS (finish.lua, a task's end, starts with the same)."""
        a = who.account_id
        return [
            keys.account(a),
            keys.leases(a, who.org_id),
            keys.holds(a),
            keys.request_log(a),
            keys.usage_hours(a, order["now_ms"]),
            keys.usage_day(a, order["now_ms"]),
            keys.idempotency(a, who.org_id, order["idempotency_key"] or "-"),
            keys.reclaimed(a),
            keys.billing(a),
        ]

    @staticmethod
    def settle_args(who: Identity, order: SettleOrder) -> list[str | int]:
        """settle.lua's ARGV (finish.lua's start with the same)."""
        return [
            order["request_id"],
            who.org_id,
            order["now_ms"],
            1 if order["charge"] else 0,
            order["route"],
            order["status"],
            order["latency_ms"],
            REQUEST_LOG_LENGTH,
            USAGE_RETENTION_S,
            order["response"] if order["idempotency_key"] else "",
            IDEMPOTENCY_TTL_S,
            order["price"],
            order["cycle"],
        ]

    async def settle(self, who: Identity, order: SettleOrder) -> Settlement:
        reply = await self.call(
            "settle",
            self.batcher.run(SETTLE, self.settle_keys(who, order), self.settle_args(who, order)),
            deadline=False,
        )
        return Settlement(bool(int(reply[0])), int(reply[1]), int(reply[2]), int(reply[3]))

    async def count_call(
        self, who: Identity, *, request_id: str, now_ms: int, changes_per_hour: int = 0
    ) -> CallAdmission:
        """Count a customer-API call in the account's rate window (the one admission uses);
        changes_per_hour > 0: the call changes the subscription and takes one of those."""
        a = who.account_id
        reply = await self.call(
            "rate",
            RATE.run(
                self.client,
                [keys.account(a), keys.subscription_changes(a)],
                [who.key_id, now_ms, request_id, changes_per_hour],
            ),
        )
        return CallAdmission(str(reply[0]), *(int(v) for v in reply[1:4]))

    async def release_change(self, who: Identity, request_id: str) -> None:
        """Give back the change a call took: it failed, so it changed nothing."""
        await self.call(
            "rate", self.client.zrem(keys.subscription_changes(who.account_id), request_id)
        )

    async def stored_response(self, who: Identity, key_hash: str) -> str | None:
        """The response kept for an Idempotency-Key (one extra round trip, on retries only)."""
        raw = await self.call(
            "lookup",
            self.client.hget(keys.idempotency(who.account_id, who.org_id, key_hash), "response"),
        )
        return None if raw is None else str(raw)

    async def renew(self, leases: Iterable[tuple[Identity, str]], expires_ms: int) -> None:
        """Push the expiry of in-flight leases forward, one pipelined ZADD XX per org."""
        by_org: dict[str, dict[str, int]] = {}
        for who, request_id in leases:
            by_org.setdefault(keys.leases(who.account_id, who.org_id), {})[request_id] = expires_ms
        if not by_org:
            return
        pipe = self.client.pipeline(transaction=False)
        for key, members in by_org.items():
            # XX: a lease that was settled or reclaimed meanwhile must not come back.
            pipe.zadd(key, members, xx=True)
        await self.call("renew", pipe.execute())
