"""Money in integer cents: rounding and proration (SPEC R3, R8). Pure."""

from __future__ import annotations

import math
from datetime import datetime


def round_half_up_div(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half up, for non-negative integers."""
    if denominator <= 0 or numerator < 0:
        raise ValueError("needs a non-negative numerator and a positive denominator")
    return (2 * numerator + denominator) // (2 * denominator)


def days_between(start: datetime, end: datetime) -> int:
    """Whole days in a cycle; cycles start and end at the same time of day."""
    return math.ceil((end - start).total_seconds() / 86400)


def prorate(
    delta_cents: int, start: datetime, end: datetime, now: datetime
) -> tuple[int, int, int]:
    """(charge, days_left L, days_total T) for an upgrade at `now` in [start, end) (R3)."""
    total = days_between(start, end)
    seconds_left = max(0.0, (end - now).total_seconds())
    left = min(total, math.ceil(seconds_left / 86400))
    return round_half_up_div(max(0, delta_cents) * left, total), left, total


def prorate_credits(old_credits: int, new_credits: int, left: int, total: int) -> int:
    """The old plan's credits moved toward the new plan's by L/T of the difference, rounded
    half up (R4 `prorated`); always between the two."""
    share = round_half_up_div(abs(new_credits - old_credits) * left, total)
    return old_credits + share if new_credits >= old_credits else old_credits - share


def overage_cents(overage_credits: int, rate_cents_per_1k: int) -> int:
    """What `overage_credits` cost at a per-1000-credit rate, rounded half up to cents (R8)."""
    return round_half_up_div(max(0, overage_credits) * rate_cents_per_1k, 1000)
