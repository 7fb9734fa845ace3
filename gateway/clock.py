"""Time as a dependency: the clock is passed in, and these helpers convert its readings."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def system_clock() -> datetime:
    """The wall clock, in UTC."""
    return datetime.now(UTC)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, exactly."""
    return (moment - _EPOCH) // _MS


def from_ms(ms: int) -> datetime:
    """An aware UTC datetime from epoch milliseconds."""
    return _EPOCH + ms * _MS


def iso(moment: datetime) -> str:
    """UTC ISO 8601 with a Z, to the millisecond."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """An ISO 8601 instant; naive values are taken as UTC. ValueError when malformed or when
    its UTC time falls outside years 1..9999 (9999-12-31T23:00-05:00 is in year 10000)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError(f"{text!r} is out of range in UTC") from exc
