"""SPEC R1: anniversary cycles counted from the anchor, day clamped, half-open."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone
from itertools import pairwise

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.billing.cycles import add_months, check_anchor, cycle_at, cycle_index

MICROSECOND = timedelta(microseconds=1)


def utc(year: int, month: int, day: int, hour: int = 9, minute: int = 30) -> datetime:
    """An instant at a fixed, non-midnight time of day so that drifting times show up."""
    return datetime(year, month, day, hour, minute, 15, 250_000, tzinfo=UTC)


# (anchor, the starts of cycles 0, 1, 2, ... in order)
CYCLE_STARTS = [
    pytest.param(
        utc(2024, 1, 31),
        [utc(2024, 1, 31), utc(2024, 2, 29), utc(2024, 3, 31), utc(2024, 4, 30), utc(2024, 5, 31)],
        id="31st-leap-2024",
    ),
    pytest.param(
        utc(2025, 1, 31),
        [utc(2025, 1, 31), utc(2025, 2, 28), utc(2025, 3, 31), utc(2025, 4, 30), utc(2025, 5, 31)],
        id="31st-nonleap-2025",
    ),
    pytest.param(
        utc(2026, 1, 31),
        [utc(2026, 1, 31), utc(2026, 2, 28), utc(2026, 3, 31), utc(2026, 4, 30)],
        id="31st-nonleap-2026",
    ),
    pytest.param(
        utc(2028, 1, 31),
        [utc(2028, 1, 31), utc(2028, 2, 29), utc(2028, 3, 31), utc(2028, 4, 30)],
        id="31st-leap-2028",
    ),
    pytest.param(
        utc(2024, 1, 30),
        [utc(2024, 1, 30), utc(2024, 2, 29), utc(2024, 3, 30), utc(2024, 4, 30)],
        id="30th-leap-2024",
    ),
    pytest.param(
        utc(2025, 1, 30),
        [utc(2025, 1, 30), utc(2025, 2, 28), utc(2025, 3, 30), utc(2025, 4, 30)],
        id="30th-nonleap-2025",
    ),
    pytest.param(
        utc(2026, 1, 30),
        [utc(2026, 1, 30), utc(2026, 2, 28), utc(2026, 3, 30)],
        id="30th-nonleap-2026",
    ),
    pytest.param(
        utc(2028, 1, 30),
        [utc(2028, 1, 30), utc(2028, 2, 29), utc(2028, 3, 30)],
        id="30th-leap-2028",
    ),
    pytest.param(
        utc(2024, 1, 29),
        [utc(2024, 1, 29), utc(2024, 2, 29), utc(2024, 3, 29)],
        id="29th-leap-2024",
    ),
    pytest.param(
        utc(2025, 1, 29),
        [utc(2025, 1, 29), utc(2025, 2, 28), utc(2025, 3, 29)],
        id="29th-nonleap-2025",
    ),
    pytest.param(
        utc(2026, 1, 29),
        [utc(2026, 1, 29), utc(2026, 2, 28), utc(2026, 3, 29)],
        id="29th-nonleap-2026",
    ),
    pytest.param(
        utc(2028, 1, 29),
        [utc(2028, 1, 29), utc(2028, 2, 29), utc(2028, 3, 29)],
        id="29th-leap-2028",
    ),
    pytest.param(
        utc(2025, 11, 30),
        [
            utc(2025, 11, 30),
            utc(2025, 12, 30),
            utc(2026, 1, 30),
            utc(2026, 2, 28),
            utc(2026, 3, 30),
        ],
        id="30th-across-new-year",
    ),
    pytest.param(
        utc(2027, 12, 31),
        [utc(2027, 12, 31), utc(2028, 1, 31), utc(2028, 2, 29), utc(2028, 3, 31)],
        id="31st-across-new-year-into-leap",
    ),
    pytest.param(
        utc(2025, 8, 31),
        [
            utc(2025, 8, 31),
            utc(2025, 9, 30),
            utc(2025, 10, 31),
            utc(2025, 11, 30),
            utc(2025, 12, 31),
        ],
        id="31st-short-autumn-months",
    ),
]


@pytest.mark.parametrize(("anchor", "starts"), CYCLE_STARTS)
def test_cycle_k_starts_k_months_after_the_anchor_with_the_day_clamped(
    anchor: datetime, starts: list[datetime]
) -> None:
    assert [add_months(anchor, k) for k in range(len(starts))] == starts


@pytest.mark.parametrize(("anchor", "starts"), CYCLE_STARTS)
def test_each_cycle_runs_from_its_start_to_the_next_start(
    anchor: datetime, starts: list[datetime]
) -> None:
    for k, (start, end) in enumerate(pairwise(starts)):
        assert cycle_index(anchor, start) == k
        assert cycle_at(anchor, start) == (start, end)
        assert cycle_at(anchor, end - MICROSECOND) == (start, end)


@pytest.mark.parametrize(
    ("anchor", "k", "expected"),
    [
        (utc(2024, 2, 29), 1, utc(2024, 3, 29)),
        (utc(2024, 2, 29), 12, utc(2025, 2, 28)),
        (utc(2024, 2, 29), 13, utc(2025, 3, 29)),
        (utc(2024, 2, 29), 48, utc(2028, 2, 29)),
        (utc(2024, 1, 31), 13, utc(2025, 2, 28)),
        (utc(2024, 1, 31), 14, utc(2025, 3, 31)),
        (utc(2024, 1, 31), 49, utc(2028, 2, 29)),
    ],
    ids=[
        "leap-day+1",
        "leap-day+12",
        "leap-day+13",
        "leap-day+48",
        "31st+13",
        "31st+14",
        "31st+49",
    ],
)
def test_far_cycles_are_counted_from_the_anchor_not_from_the_previous_cycle(
    anchor: datetime, k: int, expected: datetime
) -> None:
    assert add_months(anchor, k) == expected


def test_the_march_cycle_after_a_clamped_february_is_back_on_the_31st() -> None:
    anchor = utc(2025, 1, 31)
    feb_start, feb_end = cycle_at(anchor, utc(2025, 3, 1))
    assert (feb_start, feb_end) == (utc(2025, 2, 28), utc(2025, 3, 31))
    assert cycle_at(anchor, feb_end) == (utc(2025, 3, 31), utc(2025, 4, 30))


def test_the_boundary_instant_belongs_to_the_cycle_it_starts() -> None:
    anchor = utc(2024, 1, 31)
    boundary = utc(2024, 2, 29)
    assert cycle_index(anchor, boundary) == 1
    assert cycle_at(anchor, boundary) == (utc(2024, 2, 29), utc(2024, 3, 31))


def test_one_microsecond_before_the_boundary_is_still_the_previous_cycle() -> None:
    anchor = utc(2024, 1, 31)
    just_before = utc(2024, 2, 29) - MICROSECOND
    assert cycle_index(anchor, just_before) == 0
    assert cycle_at(anchor, just_before) == (utc(2024, 1, 31), utc(2024, 2, 29))


def test_the_anchor_itself_starts_cycle_zero() -> None:
    anchor = utc(2026, 3, 15)
    assert cycle_index(anchor, anchor) == 0
    assert cycle_at(anchor, anchor) == (anchor, utc(2026, 4, 15))


def test_time_of_day_decides_on_the_boundary_date() -> None:
    anchor = utc(2026, 1, 31, hour=18, minute=0)
    # On Feb 28 the new cycle begins at 18:00, not at midnight.
    assert cycle_at(anchor, utc(2026, 2, 28, hour=17, minute=59)) == (
        utc(2026, 1, 31, hour=18, minute=0),
        utc(2026, 2, 28, hour=18, minute=0),
    )
    assert cycle_index(anchor, utc(2026, 2, 28, hour=18, minute=0)) == 1


# Properties ---------------------------------------------------------------------------------

anchors = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 12, 31, 23, 59, 59, 999_999),
    timezones=st.just(UTC),
)
later = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=366 * 40))
cycle_numbers = st.integers(min_value=0, max_value=12 * 100)


def month_length(moment: datetime) -> int:
    return calendar.monthrange(moment.year, moment.month)[1]


@given(anchor=anchors, offset=later)
def test_cycle_at_contains_now(anchor: datetime, offset: timedelta) -> None:
    now = anchor + offset
    start, end = cycle_at(anchor, now)
    assert start <= now < end
    k = cycle_index(anchor, now)
    assert k >= 0
    assert (start, end) == (add_months(anchor, k), add_months(anchor, k + 1))


@given(anchor=anchors, k=cycle_numbers)
def test_consecutive_cycles_are_contiguous(anchor: datetime, k: int) -> None:
    start, end = cycle_at(anchor, add_months(anchor, k))
    next_start, _ = cycle_at(anchor, end)
    assert end == next_start
    assert cycle_at(anchor, end - MICROSECOND) == (start, end)


@given(anchor=anchors, k=cycle_numbers)
def test_every_cycle_lasts_28_to_31_whole_days(anchor: datetime, k: int) -> None:
    length = add_months(anchor, k + 1) - add_months(anchor, k)
    assert timedelta(days=28) <= length <= timedelta(days=31)
    assert length % timedelta(days=1) == timedelta(0)


@given(anchor=anchors, k=cycle_numbers)
def test_cycle_start_day_is_the_anchor_day_clamped_to_the_month(anchor: datetime, k: int) -> None:
    start = add_months(anchor, k)
    assert start.day == min(anchor.day, month_length(start))
    months_after = (start.year - anchor.year) * 12 + (start.month - anchor.month)
    assert months_after == k


@given(anchor=anchors, k=cycle_numbers)
def test_cycle_start_keeps_the_anchor_time_of_day(anchor: datetime, k: int) -> None:
    start = add_months(anchor, k)
    assert start.timetz() == anchor.timetz()
    assert start.utcoffset() == timedelta(0)


# Anchors with an offset (R1: the same instant, converted to UTC before any cycle math) -------

offsets = st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)


@given(anchor=anchors, zone=offsets, k=st.integers(min_value=-24, max_value=12 * 100))
def test_an_anchor_with_an_offset_has_the_cycles_of_its_utc_instant(
    anchor: datetime, zone: timezone, k: int
) -> None:
    local = anchor.astimezone(zone)
    assert add_months(local, k) == add_months(anchor, k)
    assert add_months(local, k).utcoffset() == timedelta(0)


@given(anchor=anchors, zone=offsets, now_zone=offsets, offset=later)
def test_the_cycle_holding_now_ignores_the_offsets_it_is_written_in(
    anchor: datetime, zone: timezone, now_zone: timezone, offset: timedelta
) -> None:
    now = anchor + offset
    local_anchor, local_now = anchor.astimezone(zone), now.astimezone(now_zone)
    assert cycle_index(local_anchor, local_now) == cycle_index(anchor, now)
    assert cycle_at(local_anchor, local_now) == cycle_at(anchor, now)


def test_the_reported_anchor_keeps_its_utc_day_not_its_local_day() -> None:
    # 03-31T01:00+02:00 is 03-30T23:00Z: cycles end on the 30th at 23:00Z, not the 29th.
    anchor = datetime.fromisoformat("2026-03-31T01:00:00+02:00")
    now = datetime(2026, 12, 1, tzinfo=UTC)
    assert cycle_at(anchor, now) == (
        datetime(2026, 11, 30, 23, tzinfo=UTC),
        datetime(2026, 12, 30, 23, tzinfo=UTC),
    )


def test_naive_times_are_refused_rather_than_read_as_local_time() -> None:
    with pytest.raises(ValueError, match="aware"):
        add_months(datetime(2026, 1, 31), 1)


NOW = datetime(2026, 3, 15, 9, 59, 58, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-03-01T01:00:00+01:00", datetime(2026, 3, 1, tzinfo=UTC)),
        ("2000-01-01T00:00:00Z", datetime(2000, 1, 1, tzinfo=UTC)),
        ("2000-01-01T00:00:00-05:00", datetime(2000, 1, 1, 5, tzinfo=UTC)),
        ("2026-03-15T11:59:58+02:00", NOW),
    ],
)
def test_check_anchor_gives_the_utc_instant(text: str, expected: datetime) -> None:
    checked = check_anchor(datetime.fromisoformat(text), NOW)
    assert checked == expected and checked.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("0001-01-01T00:00:00+05:00", "before 2000-01-01"),
        ("0001-01-01T05:00:00+05:00", "before 2000-01-01"),
        ("2000-01-01T00:59:59+01:00", "before 2000-01-01"),
        ("1999-12-31T23:59:59.999Z", "before 2000-01-01"),
        ("9999-12-31T23:59:59-05:00", "future"),
        ("2026-03-15T09:59:58.001Z", "future"),
        ("2026-03-01T00:00:00", "UTC offset"),
    ],
)
def test_check_anchor_refuses_anchors_out_of_range(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        check_anchor(datetime.fromisoformat(text.replace("Z", "+00:00")), NOW)
