"""Anniversary cycles (SPEC R1): cycle k starts at anchor + k months, day clamped."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, the day clamped to the target month's length."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def cycle_index(anchor: datetime, now: datetime) -> int:
    """k such that start(k) <= now < start(k + 1); negative before the anchor."""
    k = (now.year - anchor.year) * 12 + (now.month - anchor.month)
    # The estimate is off by at most one either way because of clamping and time of day.
    while add_months(anchor, k) > now:
        k -= 1
    while add_months(anchor, k + 1) <= now:
        k += 1
    return k


def cycle_at(anchor: datetime, now: datetime) -> tuple[datetime, datetime]:
    """The half-open [start, end) cycle that contains `now`."""
    k = cycle_index(anchor, now)
    return add_months(anchor, k), add_months(anchor, k + 1)
