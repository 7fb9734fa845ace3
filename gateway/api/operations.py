"""What the customer API and the admin API both do to an account, written once."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gateway.billing import changes
from gateway.billing.contract import Contract, PriceBook
from gateway.billing.subscription import Transition
from gateway.catalog.models import Catalog
from gateway.clock import from_ms, iso, parse_iso, to_ms
from gateway.context import Gateway
from gateway.errors import Conflict, ValidationFailed
from gateway.ids import new_id
from gateway.store import keys
from gateway.store.accounts import AccountRecord, org_json

MAX_USAGE_DAYS = 400
MAX_HOURLY_DAYS = 31
MAX_REQUESTS = 1000


async def current(gw: Gateway, account_id: str) -> AccountRecord:
    """The account as of now, every ended cycle renewed first (R2: on the next touch)."""
    return await gw.billing.current(account_id, gw.catalog.current.catalog.plans, gw.clock())


async def change_plan(gw: Gateway, account_id: str, plan: str, *, preview: bool) -> dict[str, Any]:
    """Upgrade, schedule a downgrade or subscribe again; a preview only says what it would do."""
    catalog = gw.catalog.current.catalog
    plans, rule = catalog.plans, catalog.billing.upgrade_credits
    now = gw.clock()
    record, transition = await gw.billing.change(
        account_id,
        plans,
        now,
        lambda r: changes.change_plan(r.subscription(), plans, plan, now, upgrade_credits=rule),
        dry_run=preview,
    )
    view = _change_view(record, transition, plan)
    if not preview:
        view["entry"] = transition.entries[0].as_json()
    return view


async def cancel(gw: Gateway, account_id: str) -> dict[str, Any]:
    now = gw.clock()
    record, transition = await gw.billing.change(
        account_id,
        gw.catalog.current.catalog.plans,
        now,
        lambda r: changes.cancel(r.subscription(), now),
    )
    return {
        "status": "canceling",
        "effective_at": iso(record.cycle_end),
        "entry": transition.entries[0].as_json(),
    }


async def reactivate(gw: Gateway, account_id: str) -> dict[str, Any]:
    now = gw.clock()
    _, transition = await gw.billing.change(
        account_id,
        gw.catalog.current.catalog.plans,
        now,
        lambda r: changes.reactivate(r.subscription(), now),
    )
    return {"status": "active", "entry": transition.entries[0].as_json()}


async def adjust_credits(gw: Gateway, account_id: str, delta: int, reason: str) -> dict[str, Any]:
    now = gw.clock()
    _, transition = await gw.billing.change(
        account_id,
        gw.catalog.current.catalog.plans,
        now,
        lambda r: changes.adjust(r.subscription(), delta, reason, now),
    )
    return transition.entries[0].as_json()


async def sign_contract(gw: Gateway, account_id: str, contract: Contract) -> AccountRecord:
    """Put an account on a contract (or amend it), checking prices and org shares."""
    catalog = gw.catalog.current.catalog
    check_contract_prices(contract, catalog)
    now = gw.clock()

    def decide(record: AccountRecord) -> Transition:
        transition = changes.sign_contract(record.subscription(), contract, now)
        fields = dict(transition.fields)
        if record.kind == "public":
            # The account's one org starts with the contract's whole concurrency (section 3).
            fields[f"org:{record.orgs[0].id}:limit"] = contract.concurrency
        else:
            _check_shares(contract.concurrency, [o.concurrency for o in record.orgs])
        fields["pricebook"] = price_book(contract, catalog, previous=record).model_dump_json()
        fields["pv"] = record.pricing_version + 1
        return Transition(transition.kind, fields, transition.entries, effective_at=now)

    await gw.billing.change(account_id, catalog.plans, now, decide)
    return await current(gw, account_id)


def price_book(
    contract: Contract, catalog: Catalog, previous: AccountRecord | None = None
) -> PriceBook:
    """The contract's overrides plus the catalog prices in force when it was first signed;
    an amendment keeps the prices locked at the first signature."""
    locked = {route.name: route.price for route in catalog.routes}
    if previous is not None and previous.price_book is not None:
        locked = dict(previous.price_book.locked)
    return PriceBook(
        prices=contract.prices, locked=locked, locked_until=contract.price_locked_until
    )


def check_contract_prices(contract: Contract, catalog: Catalog) -> None:
    known = {route.name for route in catalog.routes}
    for path in contract.prices:
        if path not in known:
            raise ValidationFailed(
                f"contract.prices: unknown route {path!r}",
                details={"field": f"contract.prices.{path}"},
            )


async def add_org(gw: Gateway, account_id: str, name: str, concurrency: int) -> dict[str, Any]:
    org_id = new_id("org")
    now = gw.clock()

    def decide(record: AccountRecord) -> Transition:
        if record.kind != "enterprise" or record.contract is None:
            raise Conflict(
                "A public account has exactly one organization", details={"field": "concurrency"}
            )
        _check_shares(
            record.contract.concurrency, [o.concurrency for o in record.orgs], adding=concurrency
        )
        return Transition(
            "org", {f"org:{org_id}": org_json(name, now), f"org:{org_id}:limit": concurrency}, ()
        )

    await gw.billing.change(account_id, gw.catalog.current.catalog.plans, now, decide)
    await gw.client.set(keys.org_index(org_id), account_id)
    return {"id": org_id, "account_id": account_id, "name": name, "concurrency": concurrency}


async def update_org(
    gw: Gateway, account_id: str, org_id: str, name: str | None, concurrency: int | None
) -> dict[str, Any]:
    now = gw.clock()

    def decide(record: AccountRecord) -> Transition:
        org = record.org(org_id)
        assert org is not None
        fields: dict[str, str | int] = {}
        if name is not None:
            fields[f"org:{org_id}"] = org_json(name, org.created_at)
        if concurrency is not None:
            if record.kind != "enterprise" or record.contract is None:
                raise Conflict(
                    "A public account's concurrency follows its plan",
                    details={"field": "concurrency"},
                )
            others = [o.concurrency for o in record.orgs if o.id != org_id]
            _check_shares(record.contract.concurrency, others, adding=concurrency)
            fields[f"org:{org_id}:limit"] = concurrency
        return Transition("org", fields, ())

    record, _ = await gw.billing.change(account_id, gw.catalog.current.catalog.plans, now, decide)
    org = record.org(org_id)
    assert org is not None
    return {
        "id": org_id,
        "account_id": account_id,
        "name": name or org.name,
        "concurrency": concurrency or org.concurrency,
    }


def _check_shares(total: int, shares: list[int], adding: int = 0) -> None:
    if sum(shares) + adding > total:
        raise Conflict(
            f"Organization concurrency shares would sum to {sum(shares) + adding}, "
            f"above the contract's {total}",
            details={
                "field": "concurrency",
                "contract_concurrency": total,
                "shares": sum(shares) + adding,
            },
        )


async def usage(gw: Gateway, record: AccountRecord, query: Any) -> dict[str, Any]:
    """Buckets of requests and credits by route and org, from the hourly or daily hashes."""
    granularity = query.get("granularity", "day")
    if granularity not in ("hour", "day"):
        raise ValidationFailed("granularity: hour or day", details={"field": "granularity"})
    start = _query_time(query, "from", record.cycle_start)
    end = _query_time(query, "to", gw.clock())
    if end < start:
        raise ValidationFailed("to: must not be before from", details={"field": "to"})
    limit_days = MAX_HOURLY_DAYS if granularity == "hour" else MAX_USAGE_DAYS
    if end - start > timedelta(days=limit_days):
        raise ValidationFailed(
            f"from: at most {limit_days} days of {granularity} buckets",
            details={"field": "from", "max_days": limit_days},
        )
    hourly = granularity == "hour"
    first = _floor(to_ms(start), keys.HOUR_MS if hourly else keys.DAY_MS)
    last = to_ms(end)
    # One hash per UTC day in both cases (the hours of a day share one), so the cost of a
    # query grows with its days, never with its hours.
    days = range(_floor(first, keys.DAY_MS), last + 1, keys.DAY_MS)
    key_of = keys.usage_hours if hourly else keys.usage_day
    pipe = gw.client.pipeline(transaction=False)
    for day in days:
        pipe.hgetall(key_of(record.id, day))
    counts: dict[tuple[int, str, str], dict[str, int]] = {}
    for day, fields in zip(days, await pipe.execute(), strict=True):
        for name, value in fields.items():
            bucket = day
            if hourly:
                hour, _, name = name.partition("|")
                bucket = int(hour)
                if not first <= bucket <= last:
                    continue
            route, org, kind = name.rsplit("|", 2)
            counts.setdefault((bucket, route, org), {})[kind] = int(value)
    buckets = [
        {
            "start": iso(from_ms(bucket)),
            "route": route,
            "org_id": org,
            "requests": count.get("n", 0),
            "credits": count.get("c", 0),
        }
        for (bucket, route, org), count in sorted(counts.items())
    ]
    return {"granularity": granularity, "from": iso(start), "to": iso(end), "buckets": buckets}


async def recent_requests(gw: Gateway, account_id: str, query: Any) -> dict[str, Any]:
    try:
        limit = int(query.get("limit", 50))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_REQUESTS:
        raise ValidationFailed(
            f"limit: an integer from 1 to {MAX_REQUESTS}", details={"field": "limit"}
        )
    rows = await gw.client.xrevrange(keys.request_log(account_id), "+", "-", count=limit)
    return {
        "requests": [
            {
                "id": f["id"],
                "time": iso(from_ms(int(f["time"]))),
                "route": f["route"],
                "org_id": f["org"],
                "status": int(f["status"]),
                "credits": int(f["credits"]),
                "latency_ms": int(f["latency_ms"]),
            }
            for _, f in rows
        ]
    }


async def history(gw: Gateway, account_id: str) -> dict[str, Any]:
    return {"entries": await gw.billing.history(account_id)}


def _change_view(record: AccountRecord, transition: Transition, plan: str) -> dict[str, Any]:
    effective = transition.effective_at or record.cycle_end
    view: dict[str, Any] = {
        "change": transition.kind,
        "from_plan": record.plan,
        "plan": plan,
        "charge_cents": transition.charge_cents,
        "currency": "usd",
        "effective_at": iso(effective),
    }
    view.update(transition.extra)
    return view


def _floor(ms: int, step: int) -> int:
    return ms - ms % step


def _query_time(query: Any, name: str, default: datetime) -> datetime:
    text = query.get(name)
    if text is None:
        return default
    try:
        return parse_iso(text)
    except ValueError as exc:
        raise ValidationFailed(f"{name}: not an ISO 8601 time", details={"field": name}) from exc
