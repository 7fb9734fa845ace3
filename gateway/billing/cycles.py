"""Anniversary cycles (SPEC R1): cycle k starts at anchor + k months, day clamped.

Every calculation runs on the UTC instant: an anchor given with an offset names the same
instant, so its cycles are those of its UTC reading, never of its local calendar date."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

EARLIEST_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)


def check_anchor(anchor: datetime, now: datetime) -> datetime:
    """The anchor as a UTC instant in [2000-01-01, now]; ValueError saying what is wrong (R1)."""
    if anchor.tzinfo is None or anchor.utcoffset() is None:
        raise ValueError("give a UTC offset, e.g. Z")
    # Aware comparisons are exact and never overflow, unlike converting a year-1 instant.
    if anchor < EARLIEST_ANCHOR:
        raise ValueError("must not be before 2000-01-01T00:00:00Z")
    if anchor > now:
        raise ValueError("must not be in the future")
    return anchor.astimezone(UTC)


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months in UTC, the day clamped to the target month's length."""
    anchor = _utc(anchor)
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def cycle_index(anchor: datetime, now: datetime) -> int:
    """k such that start(k) <= now < start(k + 1); negative before the anchor."""
    anchor, now = _utc(anchor), _utc(now)
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


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        # A naive time would be read as the host's local time: never guess.
        raise ValueError("cycle math needs an aware datetime")
    return moment.astimezone(UTC)
