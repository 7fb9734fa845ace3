"""The admit and settle scripts, driven through the typed Ledger, on both store backends.

One table of behaviours (CASES) runs against a real redis-server and against the embedded
memory store (fakeredis with Lua). Every case asserts exact numbers, so both backends must agree
value for value. The clock is fixed: every call gets an explicit `now_ms`, nothing sleeps.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from gateway.billing import changes
from gateway.billing.contract import Contract, PriceBook
from gateway.billing.subscription import Entry
from gateway.catalog.models import Plan
from gateway.clock import from_ms, to_ms
from gateway.errors import Conflict
from gateway.metrics import Metrics
from gateway.queue.store import Decision, Dispatched, Failed, Finished, QueueStore, Swept
from gateway.queue.tasks import NewTask, task_view
from gateway.store import keys
from gateway.store.accounts import AccountRecord, Accounts, KeyRecord, hash_key
from gateway.store.billing import Billing
from gateway.store.ledger import (
    RECLAIMED_MEMORY_MS,
    REQUEST_LOG_LENGTH,
    USAGE_RETENTION_S,
    Admission,
    CallAdmission,
    Identity,
    Ledger,
    Settlement,
    SettleOrder,
)
from gateway.webhooks import outbox

ANCHOR = datetime(2024, 1, 15, 9, 30, tzinfo=UTC)
NOW = datetime(2024, 3, 20, 12, 0, 0, tzinfo=UTC)  # on a whole second
NOW_MS = to_ms(NOW)
CYCLE_START_MS = to_ms(datetime(2024, 3, 15, 9, 30, tzinfo=UTC))
CYCLE_END_MS = to_ms(datetime(2024, 4, 15, 9, 30, tzinfo=UTC))
TTL_MS = 30_000


# --------------------------------------------------------------------------- backends


@pytest.fixture(params=["redis", "cluster", "memory"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    if request.param == "redis":
        redis_url: str = request.getfixturevalue("redis_url")
        conn: Any = aioredis.Redis.from_url(redis_url, decode_responses=True)
    elif request.param == "cluster":
        # The Ledger sends admit and settle on its per-master pipes (store/cluster_scripts.py).
        cluster_url: str = request.getfixturevalue("redis_cluster_url")
        conn = RedisCluster.from_url(cluster_url, decode_responses=True)
    else:
        conn = fakeredis.FakeAsyncRedis(decode_responses=True)
    try:
        yield conn
    finally:
        await conn.aclose()


# --------------------------------------------------------------------------- world


@dataclass
class World:
    """One public account with one org and one key, and the ledger to drive it."""

    client: Any
    accounts: Accounts
    ledger: Ledger
    account: AccountRecord
    key: KeyRecord
    plaintext: str
    who: Identity

    @property
    def account_key(self) -> str:
        return keys.account(self.account.id)

    @property
    def leases_key(self) -> str:
        return keys.leases(self.account.id, self.who.org_id)

    @property
    def holds_key(self) -> str:
        return keys.holds(self.account.id)

    async def admit(
        self,
        request_id: str,
        price: int | None,
        *,
        at: int = NOW_MS,
        enterprise_only: bool = False,
        who: Identity | None = None,
    ) -> Admission:
        return await self.ledger.admit(
            who or self.who,
            request_id=request_id,
            now_ms=at,
            lease_ttl_ms=TTL_MS,
            price=price,
            enterprise_only=enterprise_only,
            pricing_version=str(self.account.pricing_version),
        )

    async def settle(
        self,
        request_id: str,
        *,
        charge: bool = True,
        at: int = NOW_MS + 250,
        route: str = "search",
        status: int = 200,
        latency_ms: int = 250,
        price: int = 0,
        cycle: int = CYCLE_START_MS,
    ) -> Settlement:
        """`price` and `cycle`: what the order says the request was admitted with (used only
        when its hold is gone)."""
        return await self.ledger.settle(
            self.who,
            {
                "request_id": request_id,
                "now_ms": at,
                "charge": charge,
                "price": price,
                "cycle": cycle,
                "route": route,
                "status": status,
                "latency_ms": latency_ms,
                "idempotency_key": "",
                "response": "",
            },
        )

    async def field(self, name: str) -> str | None:
        value = await self.client.hget(self.account_key, name)
        return None if value is None else str(value)

    async def balance(self) -> tuple[int, int, int]:
        """(allocation, used, held) as stored on the account hash."""
        raw = await self.client.hmget(self.account_key, ["allocation", "used", "held"])
        return int(raw[0]), int(raw[1]), int(raw[2])

    async def leases(self) -> dict[str, float]:
        return dict(await self.client.zrange(self.leases_key, 0, -1, withscores=True))

    async def holds(self) -> dict[str, str]:
        return dict(await self.client.hgetall(self.holds_key))


async def make_world(
    client: Any,
    *,
    credits: int = 100,
    concurrency: int = 3,
    rps: int = 5,
    contract: Contract | None = None,
) -> World:
    """A public account on a plan of these numbers, or an enterprise one on `contract`."""
    accounts = Accounts(client)
    if contract is None:
        plan = Plan(price_cents=4900, credits=credits, concurrency=concurrency, rate_limit_rps=rps)
        account = await accounts.create_public(
            name="Test Co", plan_name="lite", plan=plan, anchor=ANCHOR, now=NOW
        )
    else:
        account = await accounts.create_enterprise(
            name="Big Co", contract=contract, book=PriceBook(), anchor=ANCHOR, now=NOW
        )
    assert len(account.orgs) == 1
    created = await accounts.create_key(account.orgs[0].id, NOW)
    assert created is not None
    key, plaintext = created
    who = Identity(account.id, account.orgs[0].id, key.id)
    ledger = Ledger(client, Metrics(), timeout_s=2.0)
    return World(client, accounts, ledger, account, key, plaintext, who)


def ok(
    rps_limit: int,
    rps_remaining: int,
    conc_limit: int,
    conc_current: int,
    credits_remaining: int,
    reclaimed: int = 0,
) -> Admission:
    return Admission(
        "OK", rps_limit, rps_remaining, conc_limit, conc_current, credits_remaining, reclaimed
    )


def hold(credits: int, cycle_start_ms: int = CYCLE_START_MS) -> str:
    return f"{credits}:{cycle_start_ms}"


# --------------------------------------------------------------------------- the table

Case = Callable[[Any], Awaitable[None]]
CASES: dict[str, Case] = {}


def case(fn: Case) -> Case:
    CASES[fn.__name__] = fn
    return fn


@case
async def account_created_for_the_current_cycle(client: Any) -> None:
    w = await make_world(client)
    assert w.account.cycle_start == datetime(2024, 3, 15, 9, 30, tzinfo=UTC)
    assert await w.field("cycle_start") == str(CYCLE_START_MS)
    assert await w.field("cycle_end") == str(CYCLE_END_MS)
    assert await w.balance() == (100, 0, 0)
    assert await w.field(f"key:{w.key.id}") == w.who.org_id


@case
async def an_adjustment_never_leaves_a_public_balance_below_zero(client: Any) -> None:
    w = await make_world(client, credits=100)
    billing = Billing(w.accounts)
    stale = await w.accounts.get(w.account.id)
    assert stale is not None
    # Both adjustments are computed while nothing is used, then charges land before the write:
    # apply.lua checks the new allocation against used + held at the moment it writes.
    take_95 = changes.adjust(stale.subscription(), -95, "too much", NOW)
    take_90 = changes.adjust(stale.subscription(), -90, "just enough", NOW)
    assert await w.admit("r1", 10) == ok(5, 4, 3, 1, 90)
    assert (await w.settle("r1")).charged == 10
    with pytest.raises(Conflict):
        await billing.apply(stale, take_95)
    assert await w.balance() == (100, 10, 0)
    assert await client.llen(keys.billing(w.account.id)) == 1  # only the subscribe entry
    assert await w.admit("r2", 1, at=NOW_MS + 1000) == ok(5, 4, 3, 1, 89)
    with pytest.raises(Conflict):  # 10 used + 1 held > 100 - 90
        await billing.apply(stale, take_90)
    assert (await w.settle("r2", charge=False, at=NOW_MS + 1250)).charged == 0
    assert await billing.apply(stale, take_90)
    assert await w.balance() == (10, 10, 0)
    assert await client.llen(keys.billing(w.account.id)) == 2


@case
async def admit_ok_reports_exact_numbers(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=3, rps=5)
    assert await w.admit("r1", 7) == ok(5, 4, 3, 1, 93)
    assert await w.admit("r2", 10, at=NOW_MS + 400) == ok(5, 3, 3, 2, 83)
    assert await w.admit("r3", 0, at=NOW_MS + 999) == ok(5, 2, 3, 3, 83)
    assert await w.balance() == (100, 0, 17)
    assert await w.leases() == {
        "r1": NOW_MS + TTL_MS,
        "r2": NOW_MS + 400 + TTL_MS,
        "r3": NOW_MS + 999 + TTL_MS,
    }
    assert await w.holds() == {"r1": hold(7), "r2": hold(10), "r3": hold(0)}
    assert await w.field("rate_sec") == str(NOW_MS // 1000)
    assert await w.field("rate_count") == "3"
    record = await w.accounts.get(w.account.id, now_ms=NOW_MS + 1000)
    assert record is not None
    assert (record.used, record.held, record.remaining) == (0, 17, 83)
    assert record.orgs[0].in_flight == 3


@case
async def unmetered_admit_counts_rate_only(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=1, rps=5)
    assert await w.admit("u1", None) == ok(5, 4, 1, 0, 100)
    # No lease is taken, so the org's single slot does not limit unmetered requests.
    assert await w.admit("u2", None) == ok(5, 3, 1, 0, 100)
    assert await w.leases() == {}
    assert await w.holds() == {}
    assert await w.balance() == (100, 0, 0)
    assert await w.field("rate_sec") == str(NOW_MS // 1000)
    assert await w.field("rate_count") == "2"
    # The rate window is shared with metered requests.
    assert await w.admit("m1", 5) == ok(5, 2, 1, 1, 95)


@case
async def rate_limit_per_second_window(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=5, rps=3)
    assert await w.admit("a", None, at=NOW_MS) == ok(3, 2, 5, 0, 100)
    assert await w.admit("b", 1, at=NOW_MS + 10) == ok(3, 1, 5, 1, 99)
    assert await w.admit("c", None, at=NOW_MS + 500) == ok(3, 0, 5, 0, 99)
    refused = Admission("RATE_LIMIT_EXCEEDED", 3, 0, 5, 0, 99, 0)
    assert await w.admit("d", None, at=NOW_MS + 600) == refused
    assert await w.admit("e", 1, at=NOW_MS + 999) == refused
    # A refusal takes no lease, holds nothing and does not advance the window.
    assert set(await w.leases()) == {"b"}
    assert await w.holds() == {"b": hold(1)}
    assert await w.balance() == (100, 0, 1)
    assert await w.field("rate_count") == "3"
    # The next second starts a new window.
    assert await w.admit("f", 1, at=NOW_MS + 1000) == ok(3, 2, 5, 2, 98)
    assert await w.field("rate_sec") == str(NOW_MS // 1000 + 1)
    assert await w.field("rate_count") == "1"


@case
async def concurrency_limit_and_release_on_settle(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=2, rps=50)
    assert await w.admit("r1", 10) == ok(50, 49, 2, 1, 90)
    assert await w.admit("r2", 10) == ok(50, 48, 2, 2, 80)
    # At the limit: refused with the count in flight (not counting itself), nothing held.
    assert await w.admit("r3", 10) == Admission("CONCURRENT_LIMIT_EXCEEDED", 50, 47, 2, 2, 80, 0)
    assert set(await w.leases()) == {"r1", "r2"}
    assert await w.holds() == {"r1": hold(10), "r2": hold(10)}
    assert await w.balance() == (100, 0, 20)
    # A settled request frees its slot.
    assert await w.settle("r1") == Settlement(True, 10, 80)
    assert set(await w.leases()) == {"r2"}
    assert await w.admit("r4", 10, at=NOW_MS + 300) == ok(50, 46, 2, 2, 70)
    assert set(await w.leases()) == {"r2", "r4"}


@case
async def insufficient_credits_counts_used_and_held(client: Any) -> None:
    w = await make_world(client, credits=10, concurrency=5, rps=50)
    assert await w.admit("a", 3) == ok(50, 49, 5, 1, 7)
    assert await w.settle("a") == Settlement(True, 3, 7)
    assert await w.admit("b", 4) == ok(50, 48, 5, 1, 3)
    # available = allocation - used - held = 10 - 3 - 4 = 3 < 4
    assert await w.admit("c", 4) == Admission("INSUFFICIENT_CREDITS", 50, 47, 5, 1, 3, 0)
    assert await w.balance() == (10, 3, 4)
    assert set(await w.leases()) == {"b"}
    assert await w.holds() == {"b": hold(4)}
    # The refused request was never admitted: settling it is a no-op and charges nothing.
    assert await w.settle("c") == Settlement(False, 0, 3)
    assert await w.balance() == (10, 3, 4)
    # A price equal to what is available is admitted.
    assert await w.admit("d", 3) == ok(50, 46, 5, 2, 0)
    assert await w.admit("e", 1) == Admission("INSUFFICIENT_CREDITS", 50, 45, 5, 2, 0, 0)
    # Unmetered routes still pass with no credits left.
    assert await w.admit("f", None) == ok(50, 44, 5, 0, 0)
    assert await w.balance() == (10, 3, 7)


@case
async def enterprise_overage_is_never_refused_for_credits(client: Any) -> None:
    w = await make_world(client, credits=5, concurrency=2, rps=5)
    await client.hset(w.account_key, mapping={"kind": "enterprise", "overage": "1"})
    assert await w.admit("r1", 8) == ok(5, 4, 2, 1, -3)
    assert await w.settle("r1") == Settlement(True, 8, -3)
    assert await w.balance() == (5, 8, 0)


@case
async def revoked_key_is_invalid(client: Any) -> None:
    w = await make_world(client)
    created = await w.accounts.create_key(w.who.org_id, NOW)
    assert created is not None
    other = Identity(w.account.id, w.who.org_id, created[0].id)
    assert await w.accounts.revoke_key(w.key.id) is True
    assert await w.field(f"key:{w.key.id}") is None
    assert await w.admit("r1", 5) == Admission("INVALID_API_KEY", 0, 0, 0, 0, 0, 0)
    # Refused before the rate window: nothing written.
    assert await w.field("rate_count") is None
    assert await w.leases() == {}
    assert await w.holds() == {}
    # The org's other key still works.
    assert await w.admit("r2", 5, who=other) == ok(5, 4, 3, 1, 95)
    record = await w.accounts.get(w.account.id)
    assert record is not None
    revoked = {k.id: k.revoked for k in record.orgs[0].keys}
    assert revoked == {w.key.id: True, other.key_id: False}


@case
async def unknown_account_or_org_is_invalid(client: Any) -> None:
    w = await make_world(client)
    invalid = Admission("INVALID_API_KEY", 0, 0, 0, 0, 0, 0)
    ghost = Identity("acct_doesnotexist00", w.who.org_id, w.key.id)
    assert await w.admit("r1", 5, who=ghost) == invalid
    assert await client.exists(keys.account(ghost.account_id)) == 0
    assert await client.exists(keys.leases(ghost.account_id, ghost.org_id)) == 0
    assert await client.exists(keys.holds(ghost.account_id)) == 0
    stray_org = Identity(w.account.id, "org_doesnotexist000", w.key.id)
    assert await w.admit("r2", 5, who=stray_org) == invalid
    stray_key = Identity(w.account.id, w.who.org_id, "key_doesnotexist000")
    assert await w.admit("r3", 5, who=stray_key) == invalid
    assert await w.balance() == (100, 0, 0)


@case
async def inactive_subscription_is_refused(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=3, rps=5)
    await client.hset(w.account_key, "status", "canceled")
    refused = Admission("SUBSCRIPTION_INACTIVE", 5, 5, 3, 0, 100, 0)
    assert await w.admit("r1", 5) == refused
    assert await w.admit("r2", None) == refused
    assert await w.field("rate_count") is None
    assert await w.leases() == {}
    assert await w.holds() == {}
    assert await w.balance() == (100, 0, 0)
    # A subscription set to cancel at the cycle's end still serves until then.
    await client.hset(w.account_key, "status", "canceling")
    assert await w.admit("r3", 5) == ok(5, 4, 3, 1, 95)


@case
async def enterprise_only_route_needs_enterprise_account(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=3, rps=5)
    denied = Admission("INSUFFICIENT_PERMISSIONS", 5, 5, 3, 0, 100, 0)
    assert await w.admit("r1", 5, enterprise_only=True) == denied
    assert await w.field("rate_count") is None
    assert await w.leases() == {}
    assert await w.holds() == {}
    # The same account may use ordinary routes.
    assert await w.admit("r2", 5) == ok(5, 4, 3, 1, 95)
    await client.hset(w.account_key, "kind", "enterprise")
    assert await w.admit("r3", 5, enterprise_only=True) == ok(5, 3, 3, 2, 90)


@case
async def expired_leases_are_reclaimed_and_never_charged(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=2, rps=5)
    assert await w.admit("r1", 10, at=NOW_MS) == ok(5, 4, 2, 1, 90)
    assert await w.admit("r2", 5, at=NOW_MS + 1000) == ok(5, 4, 2, 2, 85)
    # One millisecond before r1's expiry: nothing reclaimed, the org is full.
    before = NOW_MS + TTL_MS - 1
    assert await w.admit("x", 1, at=before) == Admission(
        "CONCURRENT_LIMIT_EXCEEDED", 5, 4, 2, 2, 85, 0
    )
    # A lease whose expiry is exactly `now` counts as expired.
    w2 = await make_world(client, credits=100, concurrency=1, rps=5)
    assert await w2.admit("e1", 5, at=NOW_MS) == ok(5, 4, 1, 1, 95)
    assert await w2.admit("e2", 5, at=NOW_MS + TTL_MS) == ok(5, 4, 1, 1, 95, reclaimed=1)
    # Past r1's expiry (not r2's): r1 is reclaimed, its hold released, the slot reused.
    after = NOW_MS + TTL_MS + 1
    assert await w.admit("r3", 1, at=after) == ok(5, 4, 2, 2, 94, reclaimed=1)
    assert set(await w.leases()) == {"r2", "r3"}
    assert await w.holds() == {"r2": hold(5), "r3": hold(1)}
    assert await w.balance() == (100, 0, 6)
    # A dead process never settles: r1 is only remembered as reclaimed (see the next case).
    reclaimed = keys.reclaimed(w.account.id)
    assert await client.zrange(reclaimed, 0, -1, withscores=True) == [("r1", after)]
    assert await client.xlen(keys.request_log(w.account.id)) == 0
    # Reclaim also runs on refusals of that org: here both remaining leases have expired.
    later = NOW_MS + 10 * TTL_MS
    assert await w.admit("r4", 1000, at=later) == Admission(
        "INSUFFICIENT_CREDITS", 5, 4, 2, 0, 100, 2
    )
    assert await w.leases() == {}
    assert await w.holds() == {}
    assert await w.balance() == (100, 0, 0)


@case
async def a_reclaimed_request_that_settles_later_is_charged_once_from_its_order(
    client: Any,
) -> None:
    # A process cut off from the store for longer than the lease TTL spooled its success; the
    # store came back and an admission reclaimed the lease first. The replay still lands.
    w = await make_world(client, credits=100, concurrency=1, rps=50)
    admitted = await w.admit("r1", 7)
    assert admitted == ok(50, 49, 1, 1, 93) and admitted.cycle_start_ms == CYCLE_START_MS
    assert await w.admit("r2", 5, at=NOW_MS + TTL_MS) == ok(50, 49, 1, 1, 95, reclaimed=1)
    assert await w.balance() == (100, 0, 5)
    replay = NOW_MS + TTL_MS + 10
    assert await w.settle("r1", at=replay, price=7) == Settlement(True, 7, 88)
    assert await w.balance() == (100, 7, 5)
    # Exactly once: the same order again (a replay that timed out, a re-adopted spool).
    assert await w.settle("r1", at=replay + 1, price=7) == Settlement(False, 0, 88)
    assert await w.balance() == (100, 7, 5)
    logged = [fields for _, fields in await client.xrange(keys.request_log(w.account.id))]
    assert [(e["id"], e["credits"]) for e in logged] == [("r1", "7")]
    assert await client.exists(keys.reclaimed(w.account.id)) == 0
    # A reclaimed request released without a charge stays released.
    assert await w.settle("r2", at=replay + 2) == Settlement(True, 5, 88)
    assert await w.admit("r3", 4, at=replay + 3) == ok(50, 48, 1, 1, 84)
    assert await w.admit("r4", 4, at=replay + 3 + TTL_MS) == ok(50, 49, 1, 1, 84, reclaimed=1)
    assert await w.settle("r3", charge=False, status=502, price=4) == Settlement(True, 0, 84)
    assert await w.settle("r3", price=4) == Settlement(False, 0, 84)
    assert await w.balance() == (100, 12, 4)
    # A reclaimed request is remembered for RECLAIMED_MEMORY_MS, then forgotten: its settle is
    # a no-op from then on (never twice beats never lost).
    await client.hset(w.account_key, "cycle_end", NOW_MS + 2 * RECLAIMED_MEMORY_MS)
    r4_reclaimed = replay + 3 + 2 * TTL_MS
    assert (await w.admit("r5", 1, at=r4_reclaimed)).reclaimed == 1
    assert 0 < await client.pttl(keys.reclaimed(w.account.id)) <= RECLAIMED_MEMORY_MS
    much_later = r4_reclaimed + RECLAIMED_MEMORY_MS + 1
    assert (await w.admit("r6", 1, at=much_later)).reclaimed == 1
    assert await client.zrange(keys.reclaimed(w.account.id), 0, -1) == ["r5"]
    assert await w.settle("r4", price=4) == Settlement(False, 0, 87)
    assert await w.balance() == (100, 12, 1)


OVERAGE = Contract(
    credits_per_cycle=0,
    price_cents=100_000,
    concurrency=4,
    rate_limit_rps=50,
    overage=True,
    overage_rate_cents_per_1k=1050,
    net_days=7,
)


@case
async def late_charges_of_a_closed_cycle_bill_its_overage_difference(client: Any) -> None:
    w = await make_world(client, contract=OVERAGE)
    for request_id in ("a", "b", "c", "e"):
        assert (await w.admit(request_id, 5)).admitted
    assert await w.settle("a") == Settlement(True, 5, -20)
    # The cycle ends with three in flight: the renewal bills 5 credits over (5.25 cents).
    await Billing(w.accounts).current(w.account.id, {}, from_ms(CYCLE_END_MS))
    billing = keys.billing(w.account.id)
    entries = [json.loads(e) for e in await client.lrange(billing, 0, -1)]
    assert [(e["type"], e["amount_cents"]) for e in entries] == [
        ("subscribe", 100_000),
        ("overage", 5),
        ("renew", 100_000),
    ]
    # "b" settles after the renewal: charged to the closed cycle (R7), whose overage is now 10
    # credits, 10.5 -> 11 cents: the new entry bills the difference, 6 cents.
    at = CYCLE_END_MS + 1500
    assert await w.settle("b", at=at) == Settlement(True, 5, 0)
    expected = Entry(
        "bill_b",
        w.account.id,
        "overage",
        from_ms(at),
        from_ms(CYCLE_START_MS),
        from_ms(CYCLE_END_MS),
        6,
        5,
        "5 credits over the allocation at 1050 cents per 1000, settled after the renewal",
        due_at=from_ms(CYCLE_END_MS) + timedelta(days=7),
    )
    assert await client.lindex(billing, -1) == expected.dumps()
    # "c" is reclaimed by an admission of the new cycle, then lands from its order: 15 credits
    # over, 15.75 -> 16 cents, so 5 more.
    assert (await w.admit("d", 2, at=CYCLE_END_MS + TTL_MS)).reclaimed == 2  # "c" and "e"
    assert await w.settle("c", at=at + TTL_MS, price=5) == Settlement(True, 5, -2)
    # A replay bills nothing again; the new cycle's counters never saw any of it.
    assert await w.settle("b", at=at + TTL_MS + 1) == Settlement(False, 0, -2)
    overage = [
        json.loads(e)["amount_cents"]
        for e in await client.lrange(billing, 0, -1)
        if json.loads(e)["type"] == "overage"
    ]
    assert overage == [5, 6, 5] and sum(overage) == 16  # round(15 x 1.05), half up
    assert await w.balance() == (0, 0, 2)
    closed = f"{CYCLE_START_MS}:{CYCLE_END_MS}:{CYCLE_END_MS + 7 * 86_400_000}:0:15:1050"
    assert await w.field("closed") == closed
    # A late charge that stays within the allocation bills nothing (an allocation set by hand).
    await client.hset(w.account_key, "closed", closed.replace(":0:15:", ":100:15:"))
    assert await w.settle("e", at=at + TTL_MS + 2, price=5) == Settlement(True, 5, -2)
    assert await client.llen(billing) == 5
    assert await w.field("closed") == closed.replace(":0:15:", ":100:20:")


@case
async def settle_charge_turns_hold_into_used(client: Any) -> None:
    w = await make_world(client, credits=100)
    assert await w.admit("r1", 7) == ok(5, 4, 3, 1, 93)
    assert await w.settle("r1", charge=True) == Settlement(True, 7, 93)
    assert await w.balance() == (100, 7, 0)
    assert await w.leases() == {}
    assert await w.holds() == {}
    # A replay is a no-op.
    assert await w.settle("r1", charge=True, at=NOW_MS + 900) == Settlement(False, 0, 93)
    assert await w.balance() == (100, 7, 0)


@case
async def settle_without_charge_drops_hold(client: Any) -> None:
    w = await make_world(client, credits=100)
    assert await w.admit("r1", 7) == ok(5, 4, 3, 1, 93)
    assert await w.settle("r1", charge=False, status=502) == Settlement(True, 0, 100)
    assert await w.balance() == (100, 0, 0)
    assert await w.leases() == {}
    assert await w.holds() == {}
    assert await w.settle("r1", charge=True) == Settlement(False, 0, 100)
    assert await w.balance() == (100, 0, 0)


@case
async def customer_calls_share_the_rate_window_with_admission(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=5, rps=3)

    async def call(at: int) -> CallAdmission:
        return await w.ledger.count_call(w.who, request_id="c", now_ms=at)

    assert await w.admit("a", None, at=NOW_MS) == ok(3, 2, 5, 0, 100)
    assert await call(NOW_MS + 100) == CallAdmission("OK", 3, 1, 0)
    assert await call(NOW_MS + 200) == CallAdmission("OK", 3, 0, 0)
    assert await call(NOW_MS + 300) == CallAdmission("RATE_LIMIT_EXCEEDED", 3, 0, 1)
    assert await w.admit("b", 1, at=NOW_MS + 400) == Admission(
        "RATE_LIMIT_EXCEEDED", 3, 0, 5, 0, 100, 0
    )
    assert await w.field("rate_count") == "3"
    # The next second starts a new window for both.
    assert await call(NOW_MS + 1000) == CallAdmission("OK", 3, 2, 0)
    assert await w.admit("c", 1, at=NOW_MS + 1001) == ok(3, 1, 5, 1, 99)
    assert await w.field("rate_sec") == str(NOW_MS // 1000 + 1)
    # A revoked key is refused before it counts.
    await client.hdel(w.account_key, f"key:{w.key.id}")
    assert await call(NOW_MS + 1002) == CallAdmission("INVALID_API_KEY", 0, 0, 0)
    assert await w.field("rate_count") == "2"


@case
async def subscription_changes_are_capped_per_rolling_hour(client: Any) -> None:
    w = await make_world(client, rps=100)
    hour = keys.HOUR_MS
    changes = keys.subscription_changes(w.account.id)

    async def change(request_id: str, at: int, cap: int = 2) -> CallAdmission:
        return await w.ledger.count_call(
            w.who, request_id=request_id, now_ms=at, changes_per_hour=cap
        )

    assert await change("c1", NOW_MS) == CallAdmission("OK", 100, 99, 0)
    assert await change("c2", NOW_MS + 1000) == CallAdmission("OK", 100, 99, 0)
    # The third waits until the first is an hour old; it still counted as a call.
    assert await change("c3", NOW_MS + 2000) == CallAdmission(
        "CHANGE_LIMIT_EXCEEDED", 100, 99, 3598
    )
    assert await w.field("rate_count") == "1"
    # Calls that change nothing are not capped.
    assert (await change("v1", NOW_MS + 2001, cap=0)).code == "OK"
    # A change that failed gives its place back.
    await w.ledger.release_change(w.who, "c2")
    assert await change("c4", NOW_MS + 3000) == CallAdmission("OK", 100, 99, 0)
    assert await client.zrange(changes, 0, -1) == ["c1", "c4"]
    assert 0 < await client.pttl(changes) <= hour
    # An hour after c1, its place is free again.
    assert (await change("c5", NOW_MS + hour)).code == "OK"
    assert await change("c6", NOW_MS + hour + 1) == CallAdmission(  # same second as c5
        "CHANGE_LIMIT_EXCEEDED", 100, 98, 3
    )
    assert await client.zrange(changes, 0, -1) == ["c4", "c5"]


@case
async def settle_logs_request_and_bumps_hourly_usage(client: Any) -> None:
    w = await make_world(client, credits=100)
    org, log = w.who.org_id, keys.request_log(w.account.id)
    assert await w.admit("r1", 7) == ok(5, 4, 3, 1, 93)
    assert await w.admit("r2", 4) == ok(5, 3, 3, 2, 89)
    at = NOW_MS + 1234
    assert await w.settle("r1", at=at, route="search", status=200, latency_ms=321) == (
        Settlement(True, 7, 89)
    )
    assert await w.settle(
        "r2", at=at + 1, route="search", status=504, charge=False, latency_ms=2000
    ) == Settlement(True, 0, 93)
    # A replay adds neither a log entry nor usage.
    assert await w.settle("r1", at=at + 2) == Settlement(False, 0, 93)
    entries = await client.xrange(log)
    assert [fields for _, fields in entries] == [
        {
            "id": "r1",
            "time": str(at),
            "route": "search",
            "org": org,
            "status": "200",
            "credits": "7",
            "latency_ms": "321",
        },
        {
            "id": "r2",
            "time": str(at + 1),
            "route": "search",
            "org": org,
            "status": "504",
            "credits": "0",
            "latency_ms": "2000",
        },
    ]
    # The hours of a day share one hash, each field named by its hour's start (NOW is 12:00).
    hours, day = keys.usage_hours(w.account.id, at), keys.usage_day(w.account.id, at)
    assert await client.hgetall(hours) == {
        f"{NOW_MS}|search|{org}|n": "2",
        f"{NOW_MS}|search|{org}|c": "7",
    }
    assert await client.hgetall(day) == {f"search|{org}|n": "2", f"search|{org}|c": "7"}
    for usage in (hours, day):
        assert 0 < await client.ttl(usage) <= USAGE_RETENTION_S
    # The next hour is more fields of the same day's hash.
    next_hour = NOW_MS + keys.HOUR_MS
    assert keys.usage_hours(w.account.id, next_hour) == hours
    assert await w.admit("r3", 1, at=next_hour) == ok(5, 4, 3, 1, 92)
    assert await w.settle("r3", at=next_hour + 5, route="maps") == Settlement(True, 1, 92)
    assert await client.hgetall(hours) == {
        f"{NOW_MS}|search|{org}|n": "2",
        f"{NOW_MS}|search|{org}|c": "7",
        f"{next_hour}|maps|{org}|n": "1",
        f"{next_hour}|maps|{org}|c": "1",
    }
    # The next UTC day gets its own hashes.
    tomorrow = NOW_MS + keys.DAY_MS
    assert keys.usage_hours(w.account.id, tomorrow) != hours
    assert keys.usage_day(w.account.id, tomorrow) != day
    assert await client.xlen(log) == 3


@case
async def request_log_is_trimmed_to_about_its_length(client: Any) -> None:
    w = await make_world(client, credits=10**6, concurrency=1, rps=10**6)
    log = keys.request_log(w.account.id)
    total = REQUEST_LOG_LENGTH + 250
    for i in range(total):
        assert (await w.admit(f"r{i}", 1, at=NOW_MS + i)).admitted
        assert (await w.settle(f"r{i}", at=NOW_MS + i)).applied
    # MAXLEN ~ trims whole stream nodes only, so the exact length is the backend's own
    # (redis-server 7.0 keeps 1057 here, fakeredis 1056); both keep at least the length asked
    # and less than one node (100 entries by default) more.
    length = await client.xlen(log)
    assert REQUEST_LOG_LENGTH <= length < REQUEST_LOG_LENGTH + 100
    newest = await client.xrevrange(log, count=1)
    assert newest[0][1]["id"] == f"r{total - 1}"
    oldest = await client.xrange(log, count=1)
    assert int(oldest[0][1]["id"].removeprefix("r")) == total - length
    assert await w.balance() == (10**6, total, 0)


@case
async def hold_from_previous_cycle_is_not_charged_to_new_cycle(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=3, rps=5)
    assert await w.admit("old", 9) == ok(5, 4, 3, 1, 91)
    assert await w.admit("old2", 6) == ok(5, 3, 3, 2, 85)
    # Renewal: a new cycle starts with fresh counters.
    await client.hset(w.account_key, mapping={"cycle_start": CYCLE_END_MS, "used": 0, "held": 0})
    assert await w.settle("old", charge=True) == Settlement(True, 9, 100)
    assert await w.balance() == (100, 0, 0)
    assert await w.holds() == {"old2": hold(6)}
    # The charge is still recorded in the log and usage of the request's hour.
    org = w.who.org_id
    assert await client.hgetall(keys.usage_hours(w.account.id, NOW_MS + 250)) == {
        f"{NOW_MS}|search|{org}|n": "1",
        f"{NOW_MS}|search|{org}|c": "9",
    }
    # A new-cycle hold, then the old lease expires: its reclaim does not touch `held`.
    assert await w.admit("new", 4, at=NOW_MS + 2000) == ok(5, 4, 3, 2, 96)
    assert await w.holds() == {"old2": hold(6), "new": hold(4, CYCLE_END_MS)}
    assert await w.admit("new2", 3, at=NOW_MS + TTL_MS + 1) == ok(5, 4, 3, 2, 93, reclaimed=1)
    assert await w.balance() == (100, 0, 7)
    assert await w.settle("new", charge=True, at=NOW_MS + TTL_MS + 2) == Settlement(True, 4, 93)
    assert await w.balance() == (100, 4, 3)


@case
async def renew_extends_leases_but_never_resurrects(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=2, rps=5)
    assert await w.admit("r1", 10) == ok(5, 4, 2, 1, 90)
    assert await w.admit("r2", 5) == ok(5, 3, 2, 2, 85)
    await w.ledger.renew([(w.who, "r1"), (w.who, "r2")], NOW_MS + 3 * TTL_MS)
    assert await w.leases() == {"r1": NOW_MS + 3 * TTL_MS, "r2": NOW_MS + 3 * TTL_MS}
    # Past the original expiry: nothing is reclaimed, the org stays full.
    at = NOW_MS + 2 * TTL_MS
    assert await w.admit("r3", 1, at=at) == Admission(
        "CONCURRENT_LIMIT_EXCEEDED", 5, 4, 2, 2, 85, 0
    )
    assert await w.settle("r1", at=at + 1) == Settlement(True, 10, 85)
    # Renewing a settled lease must not bring it back.
    await w.ledger.renew([(w.who, "r1"), (w.who, "r2")], NOW_MS + 5 * TTL_MS)
    assert await w.leases() == {"r2": NOW_MS + 5 * TTL_MS}
    await w.ledger.renew([], NOW_MS + 6 * TTL_MS)  # nothing in flight: no store call
    assert await w.leases() == {"r2": NOW_MS + 5 * TTL_MS}
    assert await w.admit("r4", 1, at=at + 2) == ok(5, 3, 2, 2, 84)
    # Neither is a reclaimed lease brought back.
    gone = NOW_MS + 10 * TTL_MS
    assert await w.admit("r5", 1, at=gone) == ok(5, 4, 2, 1, 89, reclaimed=2)
    await w.ledger.renew([(w.who, "r2"), (w.who, "r4")], gone + TTL_MS)
    assert await w.leases() == {"r5": gone + TTL_MS}


@case
async def lookup_key_finds_created_keys(client: Any) -> None:
    w = await make_world(client)
    assert w.plaintext.startswith("sk_live_")
    assert len(w.plaintext) == len("sk_live_") + 32
    assert await w.ledger.lookup_key(hash_key(w.plaintext)) == w.who
    assert await w.ledger.lookup_key(hash_key("sk_live_" + "0" * 32)) is None
    assert await w.ledger.lookup_key("0" * 64) is None
    # Only the hash is stored, never the plaintext.
    stored = [await client.get(k) for k in await all_keys(client, "gw:apikey:*")]
    assert stored == [f"{w.account.id}|{w.who.org_id}|{w.key.id}"]
    assert await all_keys(client, "*" + w.plaintext + "*") == []
    meta = json.loads(await w.field(f"keymeta:{w.key.id}") or "{}")
    assert meta["prefix"] == w.plaintext[:12]
    assert w.plaintext not in json.dumps(meta)


async def all_keys(client: Any, pattern: str) -> list[str]:
    """KEYS over the whole keyspace: a Cluster answers KEYS per node."""
    if isinstance(client, RedisCluster):
        return list(await client.keys(pattern, target_nodes=RedisCluster.PRIMARIES))
    return list(await client.keys(pattern))


def hash_tag(key: str) -> str:
    """The part of a key that Redis Cluster hashes: the first non-empty {...}, else all."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


@case
async def account_keys_share_one_hash_tag(client: Any) -> None:
    w = await make_world(client)
    a, org = w.account.id, w.who.org_id
    names = [
        keys.account(a),
        keys.leases(a, org),
        keys.leases(a, "org_other"),
        keys.holds(a),
        keys.request_log(a),
        keys.usage_hours(a, NOW_MS),
        keys.usage_hours(a, NOW_MS + 2 * keys.DAY_MS),
        keys.usage_day(a, NOW_MS),
        keys.billing(a),
        keys.subscription_changes(a),
        keys.reclaimed(a),
        keys.task(a, "task_1"),
        keys.outbox(a),
        keys.webhook_secret(a, org),
    ]
    assert {hash_tag(name) for name in names} == {f"acct:{a}"}
    assert len({key_slot(name.encode()) for name in names}) == 1
    # And every key the scripts actually wrote for this account carries that tag.
    assert await w.admit("r1", 5) == ok(5, 4, 3, 1, 95)
    assert await w.admit("r2", 5) == ok(5, 3, 3, 2, 90)
    assert (await w.settle("r1")).applied
    index = {
        keys.api_key(hash_key(w.plaintext)),
        keys.org_index(org),
        keys.key_index(w.key.id),
        keys.CYCLE_ENDS,
    }
    written = set(await all_keys(client, "*")) - index
    assert written == {
        keys.account(a),
        keys.leases(a, org),
        keys.holds(a),
        keys.request_log(a),
        keys.usage_hours(a, NOW_MS + 250),
        keys.usage_day(a, NOW_MS + 250),
        keys.billing(a),
    }
    assert {hash_tag(name) for name in written} == {f"acct:{a}"}


# --------------------------------------------------------------------------- webhook outbox

LEASE_MS = 5_000


async def pending_task(client: Any, account_id: str, task_id: str, due_ms: int) -> None:
    """A finished task whose webhook is due, as the queue's terminal transition leaves it."""
    await client.hset(
        keys.task(account_id, task_id),
        mapping={
            "org_id": "org_1",
            "webhook_url": "https://example.com/hook",
            "webhook_state": "pending",
            "webhook_attempts": 0,
        },
    )
    await client.zadd(keys.outbox(account_id), {task_id: due_ms})


async def webhook_fields(client: Any, account_id: str, task_id: str) -> tuple[str, str]:
    state, made = await client.hmget(
        keys.task(account_id, task_id), ["webhook_state", "webhook_attempts"]
    )
    return str(state), str(made)


@case
async def outbox_claims_the_earliest_due_delivery_under_a_lease(client: Any) -> None:
    a = "acct_claims"
    await pending_task(client, a, "t_late", NOW_MS + 1_000)
    await pending_task(client, a, "t_second", NOW_MS - 5)
    await pending_task(client, a, "t_first", NOW_MS - 10)
    claim = outbox.claim
    assert await claim(client, a, now_ms=NOW_MS, lease_ms=LEASE_MS) == "t_first"
    assert await client.zscore(keys.outbox(a), "t_first") == NOW_MS + LEASE_MS
    assert await claim(client, a, now_ms=NOW_MS, lease_ms=LEASE_MS) == "t_second"
    # Claimed ones are not due again before their lease ends; the late one is not due yet.
    assert await claim(client, a, now_ms=NOW_MS, lease_ms=LEASE_MS) is None
    assert await claim(client, a, now_ms=NOW_MS + 1_000, lease_ms=LEASE_MS) == "t_late"
    # A lease that ran out (its process died mid-delivery): claimable by anyone again.
    assert await claim(client, a, now_ms=NOW_MS + LEASE_MS, lease_ms=LEASE_MS) == "t_first"
    assert await claim(client, "acct_nothing", now_ms=NOW_MS, lease_ms=LEASE_MS) is None


@case
async def outbox_ack_records_a_delivery_once(client: Any) -> None:
    a = "acct_ack"
    await pending_task(client, a, "t1", NOW_MS)
    assert await outbox.claim(client, a, now_ms=NOW_MS, lease_ms=LEASE_MS) == "t1"
    assert await outbox.ack(client, a, "t1", 1) == "DELIVERED"
    assert await webhook_fields(client, a, "t1") == ("delivered", "1")
    assert await client.zcard(keys.outbox(a)) == 0
    # The same attempt answered twice (a lapsed claim): the first record stands.
    assert await outbox.ack(client, a, "t1", 1) == "STALE"
    assert await webhook_fields(client, a, "t1") == ("delivered", "1")


@case
async def outbox_fail_retries_after_the_wait_then_gives_up(client: Any) -> None:
    a = "acct_fail"
    await pending_task(client, a, "t1", NOW_MS)

    async def fail(attempt: int, at: int) -> outbox.Failed:
        return await outbox.fail(client, a, "t1", attempt, now_ms=at, attempts=3, wait_ms=100)

    assert await fail(1, NOW_MS) == outbox.Failed("RETRY", NOW_MS + 100)
    assert await client.zscore(keys.outbox(a), "t1") == NOW_MS + 100
    assert await client.zscore(keys.OUTBOX_ACCOUNTS, a) == NOW_MS + 100
    assert await webhook_fields(client, a, "t1") == ("pending", "1")
    assert await fail(1, NOW_MS + 50) == outbox.Failed("STALE", 0)  # recorded already
    assert await client.zscore(keys.outbox(a), "t1") == NOW_MS + 100
    assert await outbox.ack(client, a, "t1", 3) == "STALE"  # not the attempt that is due
    assert await fail(2, NOW_MS + 100) == outbox.Failed("RETRY", NOW_MS + 200)
    assert await fail(3, NOW_MS + 200) == outbox.Failed("FAILED", 0)
    assert await webhook_fields(client, a, "t1") == ("failed", "3")
    assert await client.zcard(keys.outbox(a)) == 0
    assert await fail(3, NOW_MS + 300) == outbox.Failed("STALE", 0)


@case
async def outbox_drops_the_delivery_of_a_deleted_task(client: Any) -> None:
    a = "acct_gone"
    for task_id in ("t1", "t2"):
        await pending_task(client, a, task_id, NOW_MS)
        await client.delete(keys.task(a, task_id))  # retention ran out
    assert await outbox.ack(client, a, "t1", 1) == "GONE"
    failed = await outbox.fail(client, a, "t2", 1, now_ms=NOW_MS, attempts=3, wait_ms=100)
    assert failed == outbox.Failed("GONE", 0)
    assert await client.zcard(keys.outbox(a)) == 0
    assert await client.exists(keys.task(a, "t1"), keys.task(a, "t2")) == 0  # not recreated


@case
async def outbox_index_follows_the_outbox_and_is_repaired_by_the_scan(client: Any) -> None:
    # Several accounts, so that on a Cluster their outboxes sit on different masters.
    accounts = [f"acct_idx{n}" for n in range(6)]
    for n, a in enumerate(accounts):
        await pending_task(client, a, "t1", NOW_MS + n)
    assert await outbox.due_accounts(client, now_ms=NOW_MS + 10, limit=10) == []  # unindexed
    assert await outbox.reconcile(client) == len(accounts)
    assert await outbox.due_accounts(client, now_ms=NOW_MS + 10, limit=10) == accounts
    assert await outbox.due_accounts(client, now_ms=NOW_MS + 2, limit=2) == accounts[:2]
    assert await outbox.next_due_ms(client) == NOW_MS
    # Claimed: the account is next due when the claim's lease ends.
    first = accounts[0]
    assert await outbox.claim(client, first, now_ms=NOW_MS, lease_ms=LEASE_MS) == "t1"
    await outbox.reindex(client, first)
    assert await client.zscore(keys.OUTBOX_ACCOUNTS, first) == NOW_MS + LEASE_MS
    # Delivered: the account leaves the index.
    assert await outbox.ack(client, first, "t1", 1) == "DELIVERED"
    await outbox.reindex(client, first)
    assert await client.zscore(keys.OUTBOX_ACCOUNTS, first) is None
    assert await outbox.next_due_ms(client) == NOW_MS + 1
    # The scan only ever lowers an entry: a later due time in the index is not raised.
    await client.zadd(keys.OUTBOX_ACCOUNTS, {accounts[1]: NOW_MS - 99})
    await outbox.reconcile(client)
    assert await client.zscore(keys.OUTBOX_ACCOUNTS, accounts[1]) == NOW_MS - 99
# --------------------------------------------------------------------------- queues


def new_task(
    n: int, *, priority: int = 1, price: int = 5, webhook: str = "", idem: str = ""
) -> NewTask:
    return NewTask(
        id=f"task_{n:04d}",
        task_type="FLAT",
        route="/v1/monitor/flat",
        priority=priority,
        price=price,
        enterprise_only=False,
        idempotency_key=idem or None,
        webhook_url=webhook or None,
        payload=json.dumps({"n": n}),
    )


async def dispatch(
    q: QueueStore,
    w: World,
    *,
    at: int = NOW_MS,
    join: tuple[str, str] | None = None,
    max_tasks: int = 100,
) -> Dispatched:
    return await q.dispatch(
        w.account.id,
        w.who.org_id,
        now_ms=at,
        lease_ttl_ms=TTL_MS,
        max_tasks=max_tasks,
        max_waiting=2,
        join=join,
    )


def task_order(
    task_id: str, *, charge: bool = True, at: int = NOW_MS + 500, price: int = 5
) -> SettleOrder:
    return {
        "request_id": task_id,
        "now_ms": at,
        "charge": charge,
        "price": price,
        "cycle": CYCLE_START_MS,
        "route": "/v1/monitor/flat",
        "status": 200 if charge else 502,
        "latency_ms": 40,
        "idempotency_key": "",
        "response": "-",
    }


async def finish(
    q: QueueStore,
    w: World,
    task_id: str,
    attempt: int = 1,
    *,
    ok: bool = True,
    at: int = NOW_MS + 500,
) -> Finished:
    return await q.finish(
        Identity(w.account.id, w.who.org_id, ""),
        task_order(task_id, charge=ok, at=at),
        attempt=attempt,
        status="COMPLETED" if ok else "FAILED",
        response='{"ok":true}' if ok else "",
        error="" if ok else '{"code":"UPSTREAM_ERROR"}',
    )


@case
async def tasks_run_within_the_org_limit_by_priority_then_fifo(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=2)
    q = QueueStore(w.ledger)
    codes = await q.enqueue(
        w.who, NOW_MS, [new_task(1), new_task(2, priority=7), new_task(3), new_task(4, priority=7)]
    )
    assert codes == ["OK"] * 4
    assert await w.field(f"q:{w.who.org_id}") == "4" and await w.field("queued") == "4"
    first = await dispatch(q, w)
    assert [t.id for t in first.started] == ["task_0002", "task_0004"]
    assert [t.attempt for t in first.started] == [1, 1]
    assert (
        first.started[0].payload == '{"n": 2}' and first.started[0].cycle_start_ms == CYCLE_START_MS
    )
    assert await w.balance() == (100, 0, 10)
    assert await w.leases() == {"task_0002": NOW_MS + TTL_MS, "task_0004": NOW_MS + TTL_MS}
    assert (await dispatch(q, w)).started == []  # full
    done = await finish(q, w, "task_0002")
    assert done == Finished(True, 5, 90, 2, False)  # charged 5; 2 entries still queued
    assert (await finish(q, w, "task_0002")).applied is False  # once
    assert [t.id for t in (await dispatch(q, w)).started] == ["task_0001"]
    failed = await finish(q, w, "task_0004", ok=False)
    assert (failed.applied, failed.charged) == (True, 0)
    assert [t.id for t in (await dispatch(q, w)).started] == ["task_0003"]
    assert await w.field(f"q:{w.who.org_id}") == "0" and await w.field("queued") == "0"
    view = await task_view(client, w.account.id, "task_0002")
    assert view is not None and view["task"]["status"] == "COMPLETED"
    assert view["credits"] == {"creditsToCharge": 5, "creditsCharged": 5}
    assert view["response"] == {"ok": True}
    failed_view = await task_view(client, w.account.id, "task_0004")
    assert failed_view is not None and failed_view["response"] == {
        "error": {"code": "UPSTREAM_ERROR"}
    }
    assert await task_view(client, w.account.id, "task_nope") is None


@case
async def settle_reports_the_orgs_queued_entries(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=1)
    q = QueueStore(w.ledger)
    assert await w.admit("r1", 5) == ok(5, 4, 1, 1, 95)
    assert await q.enqueue(w.who, NOW_MS, [new_task(1)]) == ["OK"]
    assert (await dispatch(q, w)).started == []
    settled = await w.settle("r1")
    assert (settled.charged, settled.queued) == (5, 1)
    assert [t.id for t in (await dispatch(q, w)).started] == ["task_0001"]
    assert await w.admit("r2", 5, at=NOW_MS + 1000) == Admission(
        "CONCURRENT_LIMIT_EXCEEDED", 5, 4, 1, 1, 90, 0
    )
    assert (await finish(q, w, "task_0001")).queued == 0


@case
async def waiters_come_before_tasks_and_leave_cleanly(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=1)
    q = QueueStore(w.ledger)
    assert await w.admit("r1", 5) == ok(5, 4, 1, 1, 95)
    assert await q.enqueue(w.who, NOW_MS, [new_task(1, priority=10)]) == ["OK"]
    record = f"W|chan|{w.key.id}|7|{w.account.pricing_version}||||{NOW_MS + 5000}"
    joined = await dispatch(q, w, join=("w1", record))
    assert (joined.code, joined.decided, joined.started) == ("OK", [], [])
    assert (await dispatch(q, w, join=("w2", record))).code == "OK"
    assert (await dispatch(q, w, join=("w3", record))).code == "FULL"  # max_waiting 2
    assert await w.field(f"q:{w.who.org_id}") == "3"
    assert (await q.leave(w.who, "w2")) == ("LEFT", None)
    assert (await w.settle("r1")).queued == 2
    turn = await dispatch(q, w, at=NOW_MS + 300)
    assert turn.decided == [Decision("w1", "chan", f"OK|5|5|1|1|88|{CYCLE_START_MS}")]
    assert turn.started == []  # the waiter took the slot
    assert await w.holds() == {"w1": hold(7)}
    assert await q.leave(w.who, "w1") == ("DECIDED", f"OK|5|5|1|1|88|{CYCLE_START_MS}")
    assert await q.leave(w.who, "w1") == ("NONE", None)
    assert (await w.settle("w1", at=NOW_MS + 400)).queued == 1
    assert [t.id for t in (await dispatch(q, w, at=NOW_MS + 500)).started] == ["task_0001"]
    # A waiter past its deadline (its process died) is dropped, not admitted.
    late = f"W|chan|{w.key.id}|7|{w.account.pricing_version}||||{NOW_MS + 600}"
    assert (await dispatch(q, w, at=NOW_MS + 550, join=("w4", late))).decided == []
    assert (await finish(q, w, "task_0001", at=NOW_MS + 700)).queued == 1
    assert (await dispatch(q, w, at=NOW_MS + 700)).decided == []
    assert await w.field(f"q:{w.who.org_id}") == "0"
    assert await client.hlen(keys.waiters(w.account.id)) == 0


@case
async def a_dead_runs_task_is_queued_again_then_exhausted_and_never_charged_twice(
    client: Any,
) -> None:
    w = await make_world(client, credits=100, concurrency=1)
    q = QueueStore(w.ledger)
    assert await q.enqueue(w.who, NOW_MS, [new_task(1, webhook="http://hook/")]) == ["OK"]
    assert [t.attempt for t in (await dispatch(q, w)).started] == [1]
    alive = await q.sweep(w.account.id, now_ms=NOW_MS + 1000, max_attempts=2, retention_ms=10**9)
    assert alive == Swept(0, [], [], 1)
    expired = NOW_MS + TTL_MS + 1
    swept = await q.sweep(w.account.id, now_ms=expired, max_attempts=2, retention_ms=10**9)
    assert swept == Swept(1, [], [w.who.org_id], 1)
    assert await w.balance() == (100, 0, 0) and await w.leases() == {}
    second = await dispatch(q, w, at=expired)
    assert [t.attempt for t in second.started] == [2]
    # The dead run's late end changes nothing: only the current run settles the task.
    assert (await finish(q, w, "task_0001", attempt=1, at=expired + 10)).applied is False
    assert await w.balance() == (100, 0, 5)
    later = expired + TTL_MS + 1
    gone = await q.sweep(w.account.id, now_ms=later, max_attempts=2, retention_ms=10**9)
    assert gone == Swept(0, [Failed("task_0001", "FLAT", "ATTEMPTS_EXHAUSTED", True)], [], 1)
    assert await w.balance() == (100, 0, 0)
    view = await task_view(client, w.account.id, "task_0001")
    assert view is not None and view["response"]["error"]["code"] == "ATTEMPTS_EXHAUSTED"
    assert view["credits"]["creditsCharged"] == 0
    assert await client.zrange(keys.outbox(w.account.id), 0, -1, withscores=True) == [
        ("task_0001", later)
    ]
    assert await client.hmget(
        keys.task(w.account.id, "task_0001"), ["webhook_state", "webhook_attempts"]
    ) == ["pending", "0"]


@case
async def cancel_fails_a_queued_task_and_retention_deletes_it(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=1)
    q = QueueStore(w.ledger)
    tasks = [new_task(1), new_task(2, idem="k1", webhook="http://hook/")]
    assert await q.enqueue(w.who, NOW_MS, tasks) == ["OK", "OK"]
    assert await q.enqueue(w.who, NOW_MS, [new_task(3, idem="k1")]) == ["DUPLICATE:task_0002"]
    assert [t.id for t in (await dispatch(q, w)).started] == ["task_0001"]
    assert await q.cancel(w.who, "task_0001", NOW_MS + 10) == ("CONFLICT", "FLAT", False)
    other = Identity(w.account.id, "org_other", w.key.id)
    assert await q.cancel(other, "task_0002", NOW_MS + 10) == ("NOT_FOUND", "", False)
    assert await q.cancel(w.who, "task_0002", NOW_MS + 10) == ("OK", "FLAT", True)
    assert await q.cancel(w.who, "task_0002", NOW_MS + 20) == ("CONFLICT", "FLAT", False)
    assert await w.field(f"q:{w.who.org_id}") == "0" and await w.field("queued") == "0"
    assert await client.zscore(keys.outbox(w.account.id), "task_0002") == NOW_MS + 10
    assert (await finish(q, w, "task_0001", at=NOW_MS + 30)).applied
    hour = 3_600_000
    kept = await q.sweep(w.account.id, now_ms=NOW_MS + hour, max_attempts=2, retention_ms=hour)
    assert kept.retained == 2
    gone = await q.sweep(w.account.id, now_ms=NOW_MS + hour + 31, max_attempts=2, retention_ms=hour)
    assert gone.retained == 0
    assert await task_view(client, w.account.id, "task_0002") is None
    assert await client.hlen(keys.task_idempotency(w.account.id)) == 0
    assert await client.zcard(keys.org_tasks(w.account.id, w.who.org_id)) == 0
    assert await client.zcard(keys.outbox(w.account.id)) == 0
    assert await q.enqueue(w.who, NOW_MS + hour + 40, [new_task(3, idem="k1")]) == ["OK"]


@case
async def enqueue_checks_the_account_per_task(client: Any) -> None:
    w = await make_world(client, credits=12, concurrency=1)
    q = QueueStore(w.ledger)
    assert await w.admit("r1", 5) == ok(5, 4, 1, 1, 7)
    codes = await q.enqueue(w.who, NOW_MS, [new_task(1, price=7), new_task(2, price=8)])
    assert codes == ["OK", "INSUFFICIENT_CREDITS:7"]
    eo = NewTask("task_eo", "EO", "/v1/eo", 1, 1, True, None, None, "{}")
    assert await q.enqueue(w.who, NOW_MS, [eo]) == ["INSUFFICIENT_PERMISSIONS"]
    assert await q.enqueue(w.who, CYCLE_END_MS, [new_task(3)]) == ["RENEW"]
    await client.hset(w.account_key, "status", "canceled")
    assert await q.enqueue(w.who, NOW_MS, [new_task(4)]) == ["SUBSCRIPTION_INACTIVE"]
    # At dispatch: an inactive subscription fails the queued task, charged 0.
    assert (await w.settle("r1")).queued == 1
    ran = await dispatch(q, w)
    assert ran.failed == [Failed("task_0001", "FLAT", "SUBSCRIPTION_INACTIVE", False)]
    assert await w.balance() == (12, 5, 0)


@case
async def queue_keys_share_the_accounts_hash_tag(client: Any) -> None:
    w = await make_world(client, credits=100, concurrency=1)
    q = QueueStore(w.ledger)
    a = w.account.id
    assert await q.enqueue(
        w.who, NOW_MS, [new_task(1, idem="k", webhook="http://h/"), new_task(2)]
    ) == ["OK", "OK"]
    record = f"W|chan|{w.key.id}|7|{w.account.pricing_version}||||{NOW_MS + 5000}"
    await dispatch(q, w)  # task_0001 runs
    await dispatch(q, w, join=("w1", record))  # and w1 waits
    await q.cancel(w.who, "task_0002", NOW_MS + 1)
    await finish(q, w, "task_0001")
    index = {
        keys.api_key(hash_key(w.plaintext)),
        keys.org_index(w.who.org_id),
        keys.key_index(w.key.id),
        keys.CYCLE_ENDS,
    }
    written = set(await all_keys(client, "*")) - index
    assert {hash_tag(name) for name in written} == {f"acct:{a}"}
    assert {
        keys.task(a, "task_0001"),
        keys.task(a, "task_0002"),
        keys.waiting(a, w.who.org_id),
        keys.waiters(a),
        keys.finished(a),
        keys.outbox(a),
        keys.task_idempotency(a),
        keys.org_tasks(a, w.who.org_id),
    } <= written


@pytest.mark.parametrize("behaviour", list(CASES.values()), ids=list(CASES))
async def test_store_scripts(client: Any, behaviour: Case) -> None:
    await behaviour(client)
