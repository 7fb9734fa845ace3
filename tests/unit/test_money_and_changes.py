"""SPEC R2-R8: money rounding, proration and the billing transitions, as pure functions."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing.changes import (
    MAX_ALLOCATION,
    adjust,
    cancel,
    change_plan,
    paid_price,
    reactivate,
    renew,
    sign_contract,
)
from gateway.billing.contract import Contract
from gateway.billing.cycles import add_months
from gateway.billing.money import (
    days_between,
    overage_cents,
    prorate,
    prorate_credits,
    round_half_up_div,
)
from gateway.billing.subscription import Subscription, Transition
from gateway.catalog.models import Plan
from gateway.clock import parse_iso, to_ms
from gateway.errors import Conflict, ValidationFailed

FREE = Plan(price_cents=0, credits=1_000, concurrency=2, rate_limit_rps=1)
LITE = Plan(price_cents=3_000, credits=37_500, concurrency=10, rate_limit_rps=5)
HOBBY = Plan(price_cents=10_000, credits=250_000, concurrency=20, rate_limit_rps=20)
PRO = Plan(price_cents=30_000, credits=1_000_000, concurrency=50, rate_limit_rps=50)
PLANS = {"free": FREE, "lite": LITE, "hobby": HOBBY, "pro": PRO}

# The spec's worked example: a cycle of 31 days, 2026-03-15 -> 2026-04-15.
ANCHOR = parse_iso("2026-01-15T00:00:00Z")
CYCLE_START = parse_iso("2026-03-15T00:00:00Z")
CYCLE_END = parse_iso("2026-04-15T00:00:00Z")
MID_CYCLE = parse_iso("2026-03-25T10:00:00Z")
MICROSECOND = timedelta(microseconds=1)


def at(text: str) -> datetime:
    return parse_iso(text)


def sequential_ids() -> Callable[[], str]:
    counter = itertools.count(1)
    return lambda: f"bill_{next(counter):04d}"


def public(plan: str = "lite", plans: dict[str, Plan] = PLANS, **overrides: object) -> Subscription:
    """An active public subscription in the 03-15 -> 04-15 cycle on `plan` of `plans`."""
    values: dict[str, object] = {
        "account_id": "acct_1",
        "kind": "public",
        "plan": plan,
        "contract": None,
        "status": "active",
        "anchor": ANCHOR,
        "cycle_start": CYCLE_START,
        "cycle_end": CYCLE_END,
        "allocation": plans[plan].credits,
        "used": 0,
        "price_cents": plans[plan].price_cents,
    }
    values.update(overrides)
    return Subscription(**values)  # type: ignore[arg-type]


CONTRACT = Contract(
    credits_per_cycle=1_000_000,
    price_cents=500_000,
    concurrency=50,
    rate_limit_rps=100,
    overage=True,
    overage_rate_cents_per_1k=250,
    net_days=7,
)


def enterprise(**overrides: object) -> Subscription:
    values: dict[str, object] = {
        "account_id": "acct_ent",
        "kind": "enterprise",
        "plan": None,
        "contract": CONTRACT,
        "status": "active",
        "anchor": ANCHOR,
        "cycle_start": CYCLE_START,
        "cycle_end": CYCLE_END,
        "allocation": CONTRACT.credits_per_cycle,
        "used": 0,
        "price_cents": CONTRACT.price_cents,
    }
    values.update(overrides)
    return Subscription(**values)  # type: ignore[arg-type]


def types(transition: Transition) -> list[str]:
    return [entry.type for entry in transition.entries]


# Money ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("numerator", "denominator", "expected"),
    [
        (0, 1, 0),
        (0, 7, 0),
        (6, 3, 2),
        (1, 2, 1),  # 0.5 -> 1
        (3, 2, 2),  # 1.5 -> 2
        (5, 2, 3),  # 2.5 -> 3 (half up, not half even)
        (25, 10, 3),  # 2.5 -> 3
        (24, 10, 2),  # 2.4 -> 2
        (26, 10, 3),  # 2.6 -> 3
        (1, 3, 0),  # 0.33 -> 0
        (2, 3, 1),  # 0.67 -> 1
        (7_000 * 21, 31, 4_742),  # 4741.94 -> 4742
        (1_234 * 250, 1_000, 309),  # 308.5 -> 309
        (1_234 * 249, 1_000, 307),  # 307.266 -> 307
    ],
)
def test_round_half_up_div(numerator: int, denominator: int, expected: int) -> None:
    assert round_half_up_div(numerator, denominator) == expected


@pytest.mark.parametrize(("numerator", "denominator"), [(1, 0), (1, -2), (-1, 2)])
def test_round_half_up_div_rejects_negative_numerators_and_non_positive_denominators(
    numerator: int, denominator: int
) -> None:
    with pytest.raises(ValueError):
        round_half_up_div(numerator, denominator)


@pytest.mark.parametrize(
    ("credits", "rate", "expected"),
    [
        (1_234, 250, 309),  # 308.5 -> 309
        (1_000, 250, 250),
        (2, 250, 1),  # 0.5 -> 1
        (1, 250, 0),  # 0.25 -> 0
        (3, 500, 2),  # 1.5 -> 2
        (0, 250, 0),
        (-10, 250, 0),  # no overage, nothing to bill
        (1_000_000, 0, 0),
    ],
)
def test_overage_cents(credits: int, rate: int, expected: int) -> None:
    assert overage_cents(credits, rate) == expected


@pytest.mark.parametrize(
    ("start", "end", "days"),
    [
        ("2026-03-15T00:00:00Z", "2026-04-15T00:00:00Z", 31),
        ("2026-04-15T00:00:00Z", "2026-05-15T00:00:00Z", 30),
        ("2024-02-01T12:00:00Z", "2024-03-01T12:00:00Z", 29),
        ("2025-02-01T12:00:00Z", "2025-03-01T12:00:00Z", 28),
        ("2025-01-31T08:00:00Z", "2025-02-28T08:00:00Z", 28),
    ],
)
def test_days_between_counts_the_days_of_a_cycle(start: str, end: str, days: int) -> None:
    assert days_between(at(start), at(end)) == days


def test_prorate_the_spec_worked_example() -> None:
    # $30 -> $100 at 03-25T10:00Z: 20 days 14 hours left round up to L = 21.
    assert prorate(7_000, CYCLE_START, CYCLE_END, MID_CYCLE) == (4_742, 21, 31)


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        ("2026-03-15T00:00:00Z", (7_000, 31, 31)),  # at the start: the full difference
        ("2026-03-26T00:00:00Z", (4_516, 20, 31)),  # exactly 20 days left: 4516.1 -> 4516
        ("2026-03-25T23:59:59Z", (4_742, 21, 31)),  # a second more than 20 days: L = 21
        ("2026-04-14T23:59:59Z", (226, 1, 31)),  # the last second still counts a day
    ],
)
def test_prorate_counts_any_part_of_a_day_left_as_a_whole_day(
    now: str, expected: tuple[int, int, int]
) -> None:
    assert prorate(7_000, CYCLE_START, CYCLE_END, at(now)) == expected


cycle_starts = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 12, 31, 23, 59, 59),
    timezones=st.just(UTC),
)
fractions = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)


def instant_in(start: datetime, end: datetime, fraction: float) -> datetime:
    """An instant `fraction` of the way through [start, end), never end itself."""
    length = (end - start) // MICROSECOND
    return start + MICROSECOND * min(int(length * fraction), length - 1)


@given(
    start=cycle_starts,
    fraction=fractions,
    delta=st.integers(min_value=0, max_value=10_000_000),
)
def test_prorated_charge_is_between_nothing_and_the_price_difference(
    start: datetime, fraction: float, delta: int
) -> None:
    end = add_months(start, 1)
    now = instant_in(start, end, fraction)
    charge, left, total = prorate(delta, start, end, now)
    assert 28 <= total <= 31
    assert 1 <= left <= total  # any time left in the cycle counts as at least one day
    assert 0 <= charge <= delta


# The spec's worked example through change_plan (R3, R4) --------------------------------------


def test_upgrade_the_spec_worked_example() -> None:
    sub = public("lite", used=12_000)
    transition = change_plan(sub, PLANS, "hobby", MID_CYCLE, make_id=sequential_ids())

    assert transition.kind == "upgrade"
    assert transition.charge_cents == 4_742
    assert transition.effective_at == MID_CYCLE
    (entry,) = transition.entries
    assert entry.type == "upgrade"
    assert entry.amount_cents == 4_742
    assert (entry.days_left, entry.days_total) == (21, 31)
    assert (entry.from_plan, entry.to_plan) == ("lite", "hobby")
    assert (entry.cycle_start, entry.cycle_end) == (CYCLE_START, CYCLE_END)
    assert entry.occurred_at == MID_CYCLE
    assert transition.fields["allocation"] == 250_000
    assert transition.fields["plan"] == "hobby"
    assert transition.fields["price_cents"] == 10_000
    assert transition.fields["rps"] == HOBBY.rate_limit_rps
    assert transition.org_concurrency == 20
    # The cycle dates do not move on an upgrade, and credits used so far stay used (R4).
    assert not {"cycle_start", "cycle_end", "anchor", "used"} & transition.fields.keys()


plan_prices = st.integers(min_value=0, max_value=1_000_000)
plan_credits = st.integers(min_value=0, max_value=10_000_000)


@given(
    old_price=plan_prices,
    extra_price=st.integers(min_value=1, max_value=1_000_000),
    old_credits=plan_credits,
    extra_credits=plan_credits,
    used_share=st.floats(min_value=0.0, max_value=1.0),
    fraction=fractions,
)
def test_an_upgrade_never_leaves_a_negative_balance_when_usage_was_within_the_allocation(
    old_price: int,
    extra_price: int,
    old_credits: int,
    extra_credits: int,
    used_share: float,
    fraction: float,
) -> None:
    # Public plans: the pricier plan gives at least as many credits.
    plans = {
        "small": Plan(price_cents=old_price, credits=old_credits, concurrency=1, rate_limit_rps=1),
        "big": Plan(
            price_cents=old_price + extra_price,
            credits=old_credits + extra_credits,
            concurrency=2,
            rate_limit_rps=2,
        ),
    }
    used = int(old_credits * used_share)  # anywhere from nothing to the whole allocation
    now = instant_in(CYCLE_START, CYCLE_END, fraction)
    sub = public("small", plans, used=used)

    transition = change_plan(sub, plans, "big", now)

    assert transition.kind == "upgrade"
    assert 0 <= transition.charge_cents <= extra_price
    assert 1 <= transition.extra["days_left"] <= transition.extra["days_total"] == 31
    allocation = transition.fields["allocation"]
    assert allocation == old_credits + extra_credits
    assert isinstance(allocation, int)
    assert allocation - used >= 0


# The price the account pays (R3) and prorated upgrade credits (R4) -------------------------


def test_an_upgrade_prorates_from_the_price_paid_not_the_old_plans_catalog_price() -> None:
    # The account subscribed to lite at $30; a reload since made lite $90.
    repriced = {**PLANS, "lite": LITE.model_copy(update={"price_cents": 9_000})}
    sub = public("lite", price_cents=3_000)
    transition = change_plan(sub, repriced, "hobby", MID_CYCLE)
    assert transition.kind == "upgrade"
    assert transition.charge_cents == 4_742  # 7000 x 21/31, as before the reload
    assert paid_price(sub, repriced) == 3_000


def test_a_plan_pricier_than_the_catalog_old_plan_but_not_than_the_price_paid_is_a_downgrade() -> (
    None
):
    cheaper = {**PLANS, "lite": LITE.model_copy(update={"price_cents": 1_000})}
    sub = public("lite", plans=cheaper, price_cents=3_000)
    cheap = {
        **cheaper,
        "basic": Plan(price_cents=2_000, credits=50_000, concurrency=5, rate_limit_rps=5),
    }
    assert change_plan(sub, cheap, "basic", MID_CYCLE).kind == "downgrade"


def test_an_account_without_a_recorded_price_pays_its_plans_catalog_price() -> None:
    sub = public("lite", price_cents=None)
    assert paid_price(sub, PLANS) == 3_000
    assert change_plan(sub, PLANS, "hobby", MID_CYCLE).charge_cents == 4_742
    renewed = renew(sub, PLANS, CYCLE_END)
    assert renewed is not None and renewed.fields["price_cents"] == 3_000


ONE_HOUR_LEFT = CYCLE_END - timedelta(hours=1)


def test_full_upgrade_credits_give_the_whole_new_allocation_on_the_last_day() -> None:
    transition = change_plan(public("lite"), PLANS, "hobby", ONE_HOUR_LEFT)
    assert transition.charge_cents == 226  # 7000 x 1/31
    assert transition.fields["allocation"] == 250_000
    assert transition.extra["allocation"] == 250_000


def test_prorated_upgrade_credits_close_the_last_day_gap() -> None:
    transition = change_plan(
        public("lite"), PLANS, "hobby", ONE_HOUR_LEFT, upgrade_credits="prorated"
    )
    assert transition.charge_cents == 226
    # 37500 + round-half-up(212500 x 1/31) = 37500 + 6855 (6854.8)
    assert transition.fields["allocation"] == 44_355
    assert transition.extra["allocation"] == 44_355
    assert transition.entries[0].credits == 44_355


def test_prorated_upgrade_credits_the_spec_worked_example() -> None:
    transition = change_plan(public("lite"), PLANS, "hobby", MID_CYCLE, upgrade_credits="prorated")
    # 37500 + round-half-up(212500 x 21/31) = 37500 + 143952 (143951.6)
    assert transition.fields["allocation"] == 181_452


def test_prorated_upgrade_keeps_an_adjustment_and_floors_the_balance_at_zero() -> None:
    adjusted = change_plan(
        public("lite", allocation=38_000), PLANS, "hobby", ONE_HOUR_LEFT, upgrade_credits="prorated"
    )
    assert adjusted.fields["allocation"] == 44_855
    # A pricier plan with fewer credits takes its share away; the balance stops at zero.
    pricey = {
        **PLANS,
        "pricey": Plan(price_cents=5_000, credits=10_000, concurrency=5, rate_limit_rps=5),
    }
    fewer = change_plan(
        public("lite", used=30_000), pricey, "pricey", ONE_HOUR_LEFT, upgrade_credits="prorated"
    )
    assert fewer.fields["allocation"] == 37_500 - 887  # 27500 x 1/31 = 887.1
    overdrawn = change_plan(
        public("lite", used=37_000), pricey, "pricey", ONE_HOUR_LEFT, upgrade_credits="prorated"
    )
    assert overdrawn.fields["allocation"] == 37_000


def test_two_prorated_upgrades_in_one_cycle_give_what_one_would() -> None:
    first = change_plan(public("lite"), PLANS, "hobby", ONE_HOUR_LEFT, upgrade_credits="prorated")
    after_first = public(
        "hobby",
        allocation=int(first.fields["allocation"]),
        price_cents=int(first.fields["price_cents"]),
    )
    second = change_plan(after_first, PLANS, "pro", ONE_HOUR_LEFT, upgrade_credits="prorated")
    direct = change_plan(public("lite"), PLANS, "pro", ONE_HOUR_LEFT, upgrade_credits="prorated")
    assert first.charge_cents + second.charge_cents == direct.charge_cents
    # Each step rounds once: at most a credit apart, never hobby's whole 250,000 again.
    assert abs(int(second.fields["allocation"]) - int(direct.fields["allocation"])) <= 1


@given(
    old=plan_credits,
    new=plan_credits,
    total=st.integers(min_value=28, max_value=31),
    left_share=fractions,
)
def test_prorated_credits_lie_between_the_old_and_the_new_plans_credits(
    old: int, new: int, total: int, left_share: float
) -> None:
    left = 1 + int(left_share * total)  # 1..total
    credits = prorate_credits(old, new, left, total)
    assert min(old, new) <= credits <= max(old, new)
    if left == total:
        assert credits == new
    exact = old + (new - old) * left / total
    assert abs(credits - exact) <= 0.5


@given(
    old_price=plan_prices,
    extra_price=st.integers(min_value=1, max_value=1_000_000),
    old_credits=plan_credits,
    extra_credits=plan_credits,
    fraction=fractions,
)
def test_a_prorated_upgrade_never_gives_more_than_full_nor_less_than_the_old_plan(
    old_price: int, extra_price: int, old_credits: int, extra_credits: int, fraction: float
) -> None:
    plans = {
        "small": Plan(price_cents=old_price, credits=old_credits, concurrency=1, rate_limit_rps=1),
        "big": Plan(
            price_cents=old_price + extra_price,
            credits=old_credits + extra_credits,
            concurrency=2,
            rate_limit_rps=2,
        ),
    }
    now = instant_in(CYCLE_START, CYCLE_END, fraction)
    sub = public("small", plans)
    prorated = change_plan(sub, plans, "big", now, upgrade_credits="prorated")
    full = change_plan(sub, plans, "big", now)
    assert prorated.charge_cents == full.charge_cents  # the rule changes credits, not money
    assert old_credits <= int(prorated.fields["allocation"]) <= old_credits + extra_credits


# Downgrades (R5) ----------------------------------------------------------------------------


def test_downgrade_is_scheduled_for_the_cycle_end_without_a_charge() -> None:
    sub = public("hobby", used=100_000)
    transition = change_plan(sub, PLANS, "lite", MID_CYCLE)

    assert transition.kind == "downgrade"
    assert transition.fields == {"pending_plan": "lite"}
    assert transition.effective_at == CYCLE_END
    assert transition.charge_cents == 0
    (entry,) = transition.entries
    assert entry.type == "downgrade_scheduled"
    assert entry.amount_cents == 0
    assert (entry.from_plan, entry.to_plan) == ("hobby", "lite")


def test_an_upgrade_clears_a_pending_downgrade() -> None:
    sub = public("hobby", pending_plan="lite")
    transition = change_plan(sub, PLANS, "pro", MID_CYCLE)

    assert transition.kind == "upgrade"
    assert transition.fields["pending_plan"] == ""
    assert transition.fields["plan"] == "pro"
    # Prorated on the difference to the current plan, not to the pending one.
    assert transition.charge_cents == round_half_up_div((30_000 - 10_000) * 21, 31)


# Renewal (R2, R5, R6, R8) -------------------------------------------------------------------


@pytest.mark.parametrize("now", [MID_CYCLE, CYCLE_END - MICROSECOND])
def test_renew_does_nothing_before_the_cycle_ends(now: datetime) -> None:
    assert renew(public("lite", used=30_000), PLANS, now) is None


def test_renew_at_the_cycle_end_starts_a_fresh_cycle_with_the_full_allocation() -> None:
    sub = public("lite", used=30_000)
    transition = renew(sub, PLANS, CYCLE_END, make_id=sequential_ids())

    assert transition is not None
    next_end = at("2026-05-15T00:00:00Z")
    (entry,) = transition.entries
    assert entry.type == "renew"
    assert (entry.cycle_start, entry.cycle_end) == (CYCLE_END, next_end)
    assert entry.occurred_at == CYCLE_END
    assert entry.amount_cents == 3_000
    assert entry.credits == 37_500
    assert entry.to_plan == "lite"
    assert transition.fields["status"] == "active"
    assert transition.fields["cycle_start"] == to_ms(CYCLE_END)
    assert transition.fields["cycle_end"] == to_ms(next_end)
    assert transition.fields["allocation"] == 37_500
    assert transition.fields["used"] == 0
    assert transition.fields["held"] == 0
    assert transition.fields["pending_plan"] == ""


def test_renew_catches_up_one_entry_per_cycle_that_began() -> None:
    now = at("2026-07-20T08:00:00Z")
    transition = renew(public("lite", used=5), PLANS, now)

    assert transition is not None
    assert types(transition) == ["renew"] * 4
    cycles = [(e.cycle_start, e.cycle_end) for e in transition.entries]
    assert cycles == [
        (at("2026-04-15T00:00:00Z"), at("2026-05-15T00:00:00Z")),
        (at("2026-05-15T00:00:00Z"), at("2026-06-15T00:00:00Z")),
        (at("2026-06-15T00:00:00Z"), at("2026-07-15T00:00:00Z")),
        (at("2026-07-15T00:00:00Z"), at("2026-08-15T00:00:00Z")),
    ]
    assert all(e.amount_cents == 3_000 and e.credits == 37_500 for e in transition.entries)
    last_start, last_end = cycles[-1]
    assert last_start <= now < last_end
    assert transition.fields["cycle_start"] == to_ms(last_start)
    assert transition.fields["cycle_end"] == to_ms(last_end)
    assert transition.fields["used"] == 0


def test_renew_catch_up_keeps_the_anchor_day_after_a_clamped_february() -> None:
    anchor = at("2026-01-31T18:00:00Z")
    sub = public(
        "lite",
        anchor=anchor,
        cycle_start=anchor,
        cycle_end=at("2026-02-28T18:00:00Z"),
    )
    now = at("2026-05-01T00:00:00Z")
    transition = renew(sub, PLANS, now)

    assert transition is not None
    starts = [e.cycle_start for e in transition.entries]
    assert starts == [
        at("2026-02-28T18:00:00Z"),
        at("2026-03-31T18:00:00Z"),
        at("2026-04-30T18:00:00Z"),
    ]
    for earlier, later in itertools.pairwise(transition.entries):
        assert earlier.cycle_end == later.cycle_start
    assert transition.entries[-1].cycle_end == at("2026-05-31T18:00:00Z")


def test_renew_applies_a_pending_downgrade_at_the_boundary() -> None:
    sub = public("hobby", pending_plan="lite", used=200_000)
    transition = renew(sub, PLANS, CYCLE_END)

    assert transition is not None
    assert types(transition) == ["downgrade_applied", "renew"]
    applied, renewal = transition.entries
    assert (applied.from_plan, applied.to_plan) == ("hobby", "lite")
    assert applied.amount_cents == 0
    assert applied.occurred_at == CYCLE_END
    assert renewal.amount_cents == 3_000
    assert renewal.credits == 37_500
    assert renewal.to_plan == "lite"
    assert transition.fields["plan"] == "lite"
    assert transition.fields["pending_plan"] == ""
    assert transition.fields["allocation"] == 37_500
    assert transition.fields["price_cents"] == 3_000
    assert transition.fields["rps"] == LITE.rate_limit_rps
    assert transition.org_concurrency == LITE.concurrency


def test_a_pending_downgrade_applies_once_when_renewal_catches_up() -> None:
    sub = public("hobby", pending_plan="lite")
    transition = renew(sub, PLANS, at("2026-06-20T00:00:00Z"))

    assert transition is not None
    assert types(transition) == ["downgrade_applied", "renew", "renew", "renew"]
    renewals = transition.entries[1:]
    assert all(e.amount_cents == 3_000 and e.to_plan == "lite" for e in renewals)


@pytest.mark.parametrize("now", [CYCLE_END, at("2026-09-01T00:00:00Z")])
def test_a_canceling_subscription_ends_at_the_cycle_end_without_renewing(now: datetime) -> None:
    sub = public("lite", status="canceling", used=10_000)
    transition = renew(sub, PLANS, now)

    assert transition is not None
    assert types(transition) == ["canceled"]
    (entry,) = transition.entries
    assert entry.occurred_at == CYCLE_END
    assert entry.amount_cents == 0
    assert transition.fields["status"] == "canceled"
    assert transition.fields["cycle_end"] == to_ms(CYCLE_END)


def test_a_canceled_subscription_never_renews() -> None:
    sub = public("lite", status="canceled")
    assert renew(sub, PLANS, at("2027-01-01T00:00:00Z")) is None


def test_enterprise_overage_is_billed_at_renewal_before_the_renew_entry() -> None:
    sub = enterprise(used=1_001_234)
    transition = renew(sub, PLANS, CYCLE_END)

    assert transition is not None
    assert types(transition) == ["overage", "renew"]
    overage, renewal = transition.entries
    assert overage.credits == 1_234
    assert overage.amount_cents == round_half_up_div(1_234 * 250, 1_000) == 309
    assert overage.due_at == CYCLE_END + timedelta(days=7)
    assert (overage.cycle_start, overage.cycle_end) == (CYCLE_START, CYCLE_END)
    assert renewal.amount_cents == 500_000
    assert renewal.credits == 1_000_000
    assert transition.fields["allocation"] == 1_000_000
    assert transition.fields["used"] == 0


def test_enterprise_within_its_allocation_gets_no_overage_entry() -> None:
    transition = renew(enterprise(used=1_000_000), PLANS, CYCLE_END)
    assert transition is not None
    assert types(transition) == ["renew"]


def test_enterprise_overage_is_not_billed_when_the_contract_does_not_allow_it() -> None:
    contract = CONTRACT.model_copy(update={"overage": False})
    transition = renew(enterprise(contract=contract, used=1_001_234), PLANS, CYCLE_END)
    assert transition is not None
    assert types(transition) == ["renew"]


def test_renewal_records_the_closed_cycle_for_late_overage_charges() -> None:
    # Two cycles at once (an idle account): the record is the cycle that had usage, the first.
    later = add_months(CYCLE_END, 1)
    transition = renew(enterprise(used=1_001_234), PLANS, later)
    assert transition is not None
    due = to_ms(CYCLE_END + timedelta(days=CONTRACT.net_days))
    rate = CONTRACT.overage_rate_cents_per_1k
    assert transition.fields["closed"] == (
        f"{to_ms(CYCLE_START)}:{to_ms(CYCLE_END)}:{due}:1000000:1001234:{rate}"
    )
    # Without overage a late charge bills nothing, so nothing is recorded.
    no_overage = CONTRACT.model_copy(update={"overage": False})
    transition = renew(enterprise(contract=no_overage, used=5), PLANS, CYCLE_END)
    assert transition is not None and "closed" not in transition.fields
    transition = renew(public("lite", used=5), PLANS, CYCLE_END)
    assert transition is not None and "closed" not in transition.fields


# Cancel and reactivate (R6) -----------------------------------------------------------------


def test_cancel_schedules_the_end_of_the_cycle() -> None:
    transition = cancel(public("lite"), MID_CYCLE)

    assert transition.fields["status"] == "canceling"
    assert types(transition) == ["cancel_scheduled"]
    assert transition.effective_at == CYCLE_END
    assert transition.charge_cents == 0


def test_cancel_twice_is_a_conflict() -> None:
    sub = public("lite")
    first = cancel(sub, MID_CYCLE)
    canceling = replace(sub, status=str(first.fields["status"]))
    with pytest.raises(Conflict):
        cancel(canceling, MID_CYCLE)


def test_reactivate_before_the_end_is_free_and_keeps_the_dates() -> None:
    sub = public("lite", status="canceling")
    transition = reactivate(sub, MID_CYCLE)

    assert transition.fields == {"status": "active"}
    assert transition.charge_cents == 0
    (entry,) = transition.entries
    assert entry.type == "reactivated"
    assert entry.amount_cents == 0
    assert (entry.cycle_start, entry.cycle_end) == (CYCLE_START, CYCLE_END)


@pytest.mark.parametrize("status", ["active", "canceled"])
def test_reactivate_when_not_canceling_is_a_conflict(status: str) -> None:
    with pytest.raises(Conflict):
        reactivate(public("lite", status=status), MID_CYCLE)


def test_subscribing_again_after_the_end_starts_a_new_anchor() -> None:
    now = at("2026-06-02T08:30:00Z")
    sub = public("lite", status="canceled", used=37_500)
    transition = change_plan(sub, PLANS, "hobby", now)

    assert transition.kind == "subscribe"
    assert transition.charge_cents == 10_000
    assert transition.fields["anchor"] == to_ms(now)
    assert transition.fields["cycle_start"] == to_ms(now)
    assert transition.fields["cycle_end"] == to_ms(at("2026-07-02T08:30:00Z"))
    assert transition.fields["status"] == "active"
    assert transition.fields["allocation"] == 250_000
    assert transition.fields["used"] == 0
    assert transition.org_concurrency == 20
    (entry,) = transition.entries
    assert entry.type == "subscribe"
    assert (entry.cycle_start, entry.cycle_end) == (now, at("2026-07-02T08:30:00Z"))


def test_change_to_the_current_plan_is_a_conflict() -> None:
    with pytest.raises(Conflict):
        change_plan(public("lite"), PLANS, "lite", MID_CYCLE)


def test_change_to_an_unknown_plan_is_a_validation_error_on_plan() -> None:
    with pytest.raises(ValidationFailed) as caught:
        change_plan(public("lite"), PLANS, "platinum", MID_CYCLE)
    assert caught.value.status == 400
    assert caught.value.details["field"] == "plan"


def test_an_enterprise_account_cannot_change_plan() -> None:
    with pytest.raises(Conflict) as caught:
        change_plan(enterprise(), PLANS, "hobby", MID_CYCLE)
    assert caught.value.status == 409


def test_changing_plan_while_canceling_is_a_conflict() -> None:
    with pytest.raises(Conflict):
        change_plan(public("lite", status="canceling"), PLANS, "hobby", MID_CYCLE)


# Adjustments --------------------------------------------------------------------------------


@pytest.mark.parametrize(("delta", "allocation"), [(5_000, 42_500), (-7_500, 30_000), (-37_500, 0)])
def test_adjust_changes_this_cycles_allocation(delta: int, allocation: int) -> None:
    transition = adjust(public("lite"), delta, "goodwill", MID_CYCLE)

    assert transition.fields == {"allocation": allocation}
    (entry,) = transition.entries
    assert entry.type == "adjustment"
    assert entry.credits == delta
    assert entry.amount_cents == 0
    assert entry.description == "goodwill"
    assert (entry.cycle_start, entry.cycle_end) == (CYCLE_START, CYCLE_END)


def test_adjust_below_zero_is_a_conflict_on_delta() -> None:
    with pytest.raises(Conflict) as caught:
        adjust(public("lite"), -37_501, "too much", MID_CYCLE)
    assert caught.value.status == 409 and caught.value.details["field"] == "delta"


@pytest.mark.parametrize(
    ("used", "held", "delta"),
    [(2, 0, -37_499), (0, 7, -37_494), (30_000, 500, -7_001), (37_500, 0, -1)],
)
def test_adjust_never_leaves_a_public_balance_below_zero(used: int, held: int, delta: int) -> None:
    sub = public("lite", used=used, held=held)
    with pytest.raises(Conflict) as caught:
        adjust(sub, delta, "too much", MID_CYCLE)
    assert caught.value.details == {
        "field": "delta",
        "allocation": 37_500,
        "used": used,
        "held": held,
        "min_delta": used + held - 37_500,
    }
    # One credit less taken away leaves a balance of exactly zero, and the write is guarded.
    transition = adjust(sub, delta + 1, "just enough", MID_CYCLE)
    assert transition.fields == {"allocation": used + held}
    assert transition.keeps_balance


def test_adjust_may_take_an_overage_contract_below_its_use_but_not_below_zero() -> None:
    sub = enterprise(used=900_000)
    transition = adjust(sub, -500_000, "renegotiated", MID_CYCLE)
    assert transition.fields == {"allocation": 500_000}
    assert not transition.keeps_balance
    with pytest.raises(Conflict):
        adjust(sub, -1_000_001, "too much", MID_CYCLE)
    # A contract without overage is held to its balance like a public plan.
    strict = CONTRACT.model_copy(update={"overage": False})
    with pytest.raises(Conflict):
        adjust(enterprise(contract=strict, used=900_000), -100_001, "too much", MID_CYCLE)


def test_adjust_keeps_the_allocation_an_exact_lua_integer() -> None:
    sub = public("lite", allocation=MAX_ALLOCATION - 10)
    assert adjust(sub, 10, "top", MID_CYCLE).fields == {"allocation": MAX_ALLOCATION}
    with pytest.raises(Conflict):
        adjust(sub, 11, "over the top", MID_CYCLE)


def test_upgrade_balance_is_floored_at_zero_when_used_exceeds_the_new_credits() -> None:
    plans = {
        "cheap": Plan(price_cents=1000, credits=5000, concurrency=1, rate_limit_rps=1),
        "pricey": Plan(price_cents=2000, credits=1000, concurrency=2, rate_limit_rps=2),
    }
    start = datetime(2026, 3, 15, tzinfo=UTC)
    sub = Subscription(
        account_id="acct_x",
        kind="public",
        plan="cheap",
        contract=None,
        status="active",
        anchor=start,
        cycle_start=start,
        cycle_end=datetime(2026, 4, 15, tzinfo=UTC),
        allocation=5000,
        used=3000,
        price_cents=1000,
    )
    transition = change_plan(sub, plans, "pricey", datetime(2026, 3, 20, tzinfo=UTC))
    allocation = transition.fields["allocation"]
    assert isinstance(allocation, int) and allocation - sub.used == 0


# Contracts (R9: an amendment is its own entry, not a new charge) ----------------------------


def test_signing_a_contract_is_a_subscribe_at_the_contract_price() -> None:
    transition = sign_contract(public("lite"), CONTRACT, MID_CYCLE, sequential_ids())
    [entry] = transition.entries
    assert (entry.type, entry.amount_cents, entry.credits) == ("subscribe", 500_000, 1_000_000)
    assert (entry.from_plan, entry.to_plan) == ("lite", "enterprise")


@pytest.mark.parametrize("status", ["active", "canceling"])
def test_amending_a_contract_costs_nothing_at_signature(status: str) -> None:
    richer = CONTRACT.model_copy(update={"credits_per_cycle": 2_000_000, "price_cents": 900_000})
    transition = sign_contract(enterprise(status=status), richer, MID_CYCLE, sequential_ids())
    [entry] = transition.entries
    assert (entry.type, entry.amount_cents, entry.credits) == ("contract_amended", 0, 2_000_000)
    assert (entry.cycle_start, entry.cycle_end) == (CYCLE_START, CYCLE_END)
    # The new price is what the next renewal bills.
    assert transition.fields["price_cents"] == 900_000


def test_a_contract_signed_again_after_cancellation_starts_a_new_subscription() -> None:
    transition = sign_contract(enterprise(status="canceled"), CONTRACT, MID_CYCLE)
    [entry] = transition.entries
    assert (entry.type, entry.amount_cents) == ("subscribe", 500_000)
    assert entry.cycle_start == MID_CYCLE
