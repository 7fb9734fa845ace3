"""Billing transitions (SPEC R2-R8) as pure functions of the state, the plans and the clock.

Each returns a Transition (fields to set, entries to append) or raises a GatewayError naming
what is wrong; the store applies a Transition atomically, or not at all."""

from __future__ import annotations

from datetime import datetime, timedelta

from gateway.billing.contract import Contract
from gateway.billing.cycles import add_months, cycle_at, cycle_index
from gateway.billing.money import overage_cents, prorate, prorate_credits
from gateway.billing.subscription import (
    Entry,
    IdFactory,
    Subscription,
    Transition,
    new_entry_id,
)
from gateway.catalog.models import Plan
from gateway.clock import to_ms
from gateway.errors import Conflict, ValidationFailed

# The scripts compute in Lua numbers (doubles): integers are exact up to 2^53 (9.0e15).
MAX_ALLOCATION = 10**15


def renew(
    sub: Subscription, plans: dict[str, Plan], now: datetime, make_id: IdFactory = new_entry_id
) -> Transition | None:
    """Close every cycle that ended by `now` (R2, R5, R6, R8); None when nothing is due."""
    if sub.status == "canceled" or now < sub.cycle_end:
        return None
    entries: list[Entry] = []
    status, plan, pending = sub.status, sub.plan, sub.pending_plan
    start, end = sub.cycle_start, sub.cycle_end
    allocation, used, price = sub.allocation, sub.used, paid_price(sub, plans)
    concurrency: int | None = None
    rps: int | None = None
    closed: str | None = None  # R8: what late charges of the cycle closed here need

    while now >= end:
        contract = sub.contract
        if contract is not None and contract.overage and start == sub.cycle_start:
            closed = closed_cycle(start, end, allocation, used, contract)
        if contract is not None and contract.overage and used > allocation:
            over = used - allocation
            rate = contract.overage_rate_cents_per_1k
            entries.append(
                Entry(
                    make_id(),
                    sub.account_id,
                    "overage",
                    end,
                    start,
                    end,
                    overage_cents(over, rate),
                    over,
                    f"{over} credits over the allocation at {rate} cents per 1000",
                    due_at=end + timedelta(days=contract.net_days),
                )
            )
        if status == "canceling":
            entries.append(
                Entry(
                    make_id(),
                    sub.account_id,
                    "canceled",
                    end,
                    start,
                    end,
                    0,
                    0,
                    "Subscription ended at the end of the cycle",
                    from_plan=plan,
                )
            )
            status, pending = "canceled", None
            break
        if pending is not None:
            target = plans.get(pending)
            if target is not None:
                entries.append(
                    Entry(
                        make_id(),
                        sub.account_id,
                        "downgrade_applied",
                        end,
                        end,
                        add_months(sub.anchor, cycle_index(sub.anchor, end) + 1),
                        0,
                        target.credits,
                        f"Plan changed from {plan} to {pending}",
                        from_plan=plan,
                        to_plan=pending,
                    )
                )
                plan, price = pending, target.price_cents
                concurrency, rps = target.concurrency, target.rate_limit_rps
            pending = None
        start, end = end, add_months(sub.anchor, cycle_index(sub.anchor, end) + 1)
        if contract is not None:
            allocation, price = contract.credits_per_cycle, contract.price_cents
        elif plan in plans:
            allocation, price = plans[plan].credits, plans[plan].price_cents
        used = 0
        entries.append(
            Entry(
                make_id(),
                sub.account_id,
                "renew",
                start,
                start,
                end,
                price,
                allocation,
                f"Renewal of {plan or 'the contract'}",
                to_plan=plan,
            )
        )

    fields: dict[str, str | int] = {
        "status": status,
        "plan": plan or "",
        "pending_plan": pending or "",
        "cycle_start": to_ms(start),
        "cycle_end": to_ms(end),
        "allocation": allocation,
        "used": used,
        "price_cents": price,
    }
    if status != "canceled":
        fields["held"] = 0  # holds of the closed cycle settle against it, never the new one (R7)
    if rps is not None:
        fields["rps"] = rps
    if closed is not None:
        fields["closed"] = closed
    return Transition(
        "renew", fields, tuple(entries), effective_at=sub.cycle_end, org_concurrency=concurrency
    )


def paid_price(sub: Subscription, plans: dict[str, Plan]) -> int:
    """What one cycle costs the account now: the price recorded when it subscribed, renewed
    or changed plan (R3), whatever the catalog says since. An account written before the
    price was recorded pays its plan's catalog price."""
    if sub.price_cents is not None:
        return sub.price_cents
    plan = plans.get(sub.plan or "")
    return plan.price_cents if plan is not None else 0


def closed_cycle(
    start: datetime, end: datetime, allocation: int, used: int, contract: Contract
) -> str:
    """The cycle a renewal closes, as settle.lua reads it to bill the overage of requests that
    settle after the renewal (R8): "<start>:<end>:<due>:<allocation>:<used>:<rate>"."""
    due = end + timedelta(days=contract.net_days)
    rate = contract.overage_rate_cents_per_1k
    return f"{to_ms(start)}:{to_ms(end)}:{to_ms(due)}:{allocation}:{used}:{rate}"


def change_plan(
    sub: Subscription,
    plans: dict[str, Plan],
    target: str,
    now: datetime,
    make_id: IdFactory = new_entry_id,
    *,
    upgrade_credits: str = "full",
) -> Transition:
    """Upgrade now with proration (R3, R4), downgrade at the next cycle (R5), or subscribe
    again after a cancellation ended (R6). `upgrade_credits` is the catalog's
    `billing.upgrade_credits`: `full` or `prorated` (R4)."""
    new = plans.get(target)
    if new is None:
        raise ValidationFailed(
            f"plan: unknown plan {target!r}", details={"field": "plan", "known": sorted(plans)}
        )
    if sub.kind == "enterprise":
        raise Conflict(
            "Enterprise accounts change through their contract", details={"field": "plan"}
        )
    if sub.status == "canceled":
        return _resubscribe(sub, target, new, now, make_id)
    if sub.status == "canceling":
        raise Conflict(
            "The subscription is canceling: reactivate it before changing plan",
            details={"field": "plan", "status": sub.status},
        )
    if target == sub.plan:
        raise Conflict(f"The account is already on {target}", details={"field": "plan"})

    current_price = paid_price(sub, plans)  # never the old plan's catalog price (R3)
    if new.price_cents > current_price:
        charge, left, total = prorate(
            new.price_cents - current_price, sub.cycle_start, sub.cycle_end, now
        )
        # R4: the balance (allocation - used) is floored at 0: a plan with fewer credits than
        # already used leaves nothing, never a debt.
        allocation = max(
            _upgraded_allocation(sub, plans, new, left, total, upgrade_credits), sub.used
        )
        entry = Entry(
            make_id(),
            sub.account_id,
            "upgrade",
            now,
            sub.cycle_start,
            sub.cycle_end,
            charge,
            allocation,
            f"Upgrade from {sub.plan} to {target}, prorated {left}/{total} days",
            from_plan=sub.plan,
            to_plan=target,
            days_left=left,
            days_total=total,
        )
        fields: dict[str, str | int] = {
            "plan": target,
            "pending_plan": "",
            "allocation": allocation,
            "rps": new.rate_limit_rps,
            "price_cents": new.price_cents,
        }
        return Transition(
            "upgrade",
            fields,
            (entry,),
            charge_cents=charge,
            effective_at=now,
            org_concurrency=new.concurrency,
            extra={"days_left": left, "days_total": total, "allocation": allocation},
        )
    entry = Entry(
        make_id(),
        sub.account_id,
        "downgrade_scheduled",
        now,
        sub.cycle_start,
        sub.cycle_end,
        0,
        new.credits,
        f"Downgrade from {sub.plan} to {target} at the end of the cycle",
        from_plan=sub.plan,
        to_plan=target,
    )
    return Transition(
        "downgrade", {"pending_plan": target}, (entry,), charge_cents=0, effective_at=sub.cycle_end
    )


def _upgraded_allocation(
    sub: Subscription, plans: dict[str, Plan], new: Plan, left: int, total: int, rule: str
) -> int:
    """This cycle's allocation after an upgrade to `new` with `left` of `total` days left (R4)."""
    if rule != "prorated":
        return new.credits
    old = plans[sub.plan].credits if sub.plan in plans else sub.allocation
    # The prorated difference is added to what the cycle holds, which is the old plan's credits
    # unless ops adjusted it or an earlier upgrade in this cycle was prorated too: then two
    # upgrades in a row give what one would, and an adjustment is kept.
    return max(0, sub.allocation + prorate_credits(old, new.credits, left, total) - old)


def _resubscribe(
    sub: Subscription, target: str, plan: Plan, now: datetime, make_id: IdFactory
) -> Transition:
    start, end = cycle_at(now, now)
    entry = Entry(
        make_id(),
        sub.account_id,
        "subscribe",
        now,
        start,
        end,
        plan.price_cents,
        plan.credits,
        f"Subscribed again to {target}",
        to_plan=target,
    )
    fields: dict[str, str | int] = {
        "status": "active",
        "plan": target,
        "pending_plan": "",
        "anchor": to_ms(now),
        "cycle_start": to_ms(start),
        "cycle_end": to_ms(end),
        "allocation": plan.credits,
        "used": 0,
        "held": 0,
        "rps": plan.rate_limit_rps,
        "price_cents": plan.price_cents,
    }
    return Transition(
        "subscribe",
        fields,
        (entry,),
        charge_cents=plan.price_cents,
        effective_at=now,
        org_concurrency=plan.concurrency,
    )


def cancel(sub: Subscription, now: datetime, make_id: IdFactory = new_entry_id) -> Transition:
    """Cancel at the period end (R6): service and credits last until the cycle ends."""
    if sub.kind == "enterprise":
        raise Conflict("Enterprise contracts end through ops")
    if sub.status != "active":
        raise Conflict(f"The subscription is already {sub.status}", details={"status": sub.status})
    entry = Entry(
        make_id(),
        sub.account_id,
        "cancel_scheduled",
        now,
        sub.cycle_start,
        sub.cycle_end,
        0,
        0,
        "Cancels at the end of the cycle",
        from_plan=sub.plan,
    )
    return Transition(
        "cancel", {"status": "canceling", "pending_plan": ""}, (entry,), effective_at=sub.cycle_end
    )


def reactivate(sub: Subscription, now: datetime, make_id: IdFactory = new_entry_id) -> Transition:
    """Undo a scheduled cancellation before the cycle ends: no charge, same dates (R6)."""
    if sub.status != "canceling":
        hint = " (subscribe again with a plan)" if sub.status == "canceled" else ""
        raise Conflict(f"The subscription is {sub.status}{hint}", details={"status": sub.status})
    entry = Entry(
        make_id(),
        sub.account_id,
        "reactivated",
        now,
        sub.cycle_start,
        sub.cycle_end,
        0,
        0,
        "Cancellation withdrawn",
        to_plan=sub.plan,
    )
    return Transition("reactivate", {"status": "active"}, (entry,), effective_at=now)


def adjust(
    sub: Subscription, delta: int, reason: str, now: datetime, make_id: IdFactory = new_entry_id
) -> Transition:
    """An ops credit adjustment to this cycle's allocation; it expires with the cycle.

    An account that may not run into overage keeps an allocation that covers what it used and
    holds this cycle (a balance never below zero); one that may keeps it at 0 or more."""
    allocation = sub.allocation + delta
    overage = sub.contract is not None and sub.contract.overage
    floor = 0 if overage else sub.used + sub.held
    if allocation < floor:
        raise Conflict(
            "delta: would leave the allocation below the credits used and held this cycle"
            if floor
            else "delta: would make the allocation negative",
            details={
                "field": "delta",
                "allocation": sub.allocation,
                "used": sub.used,
                "held": sub.held,
                "min_delta": floor - sub.allocation,
            },
        )
    if allocation > MAX_ALLOCATION:
        raise Conflict(
            f"delta: would take the allocation above {MAX_ALLOCATION}",
            details={"field": "delta", "allocation": sub.allocation},
        )
    entry = Entry(
        make_id(),
        sub.account_id,
        "adjustment",
        now,
        sub.cycle_start,
        sub.cycle_end,
        0,
        delta,
        reason,
    )
    return Transition(
        "adjustment",
        {"allocation": allocation},
        (entry,),
        effective_at=now,
        # Charges land between this read and the write: the script checks again, atomically.
        keeps_balance=not overage,
    )


def sign_contract(
    sub: Subscription, contract: Contract, now: datetime, make_id: IdFactory = new_entry_id
) -> Transition:
    """Put the account on an enterprise contract at once; cycle dates stay (section 3, R8)."""
    start, end = sub.cycle_start, sub.cycle_end
    fields: dict[str, str | int] = {}
    if sub.status == "canceled":
        start, end = cycle_at(now, now)
        fields.update(
            {
                "anchor": to_ms(now),
                "cycle_start": to_ms(start),
                "cycle_end": to_ms(end),
                "used": 0,
                "held": 0,
            }
        )
    # An amendment of a running contract (R9) is not a new charge: it costs nothing when
    # signed, and its price is what the next renewal bills. A canceled account signs anew.
    amended = sub.kind == "enterprise" and sub.status != "canceled"
    entry = Entry(
        make_id(),
        sub.account_id,
        "contract_amended" if amended else "subscribe",
        now,
        start,
        end,
        0 if amended else contract.price_cents,
        contract.credits_per_cycle,
        "Enterprise contract amended" if amended else "Enterprise contract signed",
        from_plan=sub.plan,
        to_plan="enterprise",
    )
    fields.update(
        {
            "kind": "enterprise",
            "plan": "",
            "pending_plan": "",
            "status": "active",
            "allocation": contract.credits_per_cycle,
            "rps": contract.rate_limit_rps,
            "overage": 1 if contract.overage else 0,
            "price_cents": contract.price_cents,
            "contract": contract.model_dump_json(),
        }
    )
    return Transition("contract", fields, (entry,), charge_cents=0, effective_at=now)
