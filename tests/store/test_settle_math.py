"""settle.lua's own date and money math (the late overage entries of SPEC R8) against the Python
functions it must agree with, on real Redis (Lua 5.1) and on the memory store (fakeredis)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.billing.money import overage_cents
from gateway.clock import from_ms, iso, to_ms
from gateway.store.scripts import SETTLE


def _function(name: str) -> str:
    """One `local function` of settle.lua, as written there."""
    found = re.search(rf"^local function {name}\(.*?^end$", SETTLE.body, re.S | re.M)
    assert found is not None, f"settle.lua has no local function {name}"
    return found.group(0)


PROBE = "\n".join(
    [
        _function("iso"),
        _function("cents"),
        "return {iso(tonumber(ARGV[1])), cents(tonumber(ARGV[2]), tonumber(ARGV[3]))}",
    ]
)


@pytest.fixture(params=["redis", "memory"])
def client(request: pytest.FixtureRequest) -> Iterator[Any]:
    if request.param == "redis":
        conn: Any = redis.Redis.from_url(
            request.getfixturevalue("redis_url"), decode_responses=True
        )
    else:
        conn = fakeredis.FakeRedis(decode_responses=True)
    yield conn
    conn.close()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    moment=st.integers(
        to_ms(datetime(2000, 1, 1, tzinfo=UTC)), to_ms(datetime(2200, 1, 1, tzinfo=UTC))
    ),
    over=st.integers(0, 10**9),
    rate=st.integers(0, 100_000),
)
def test_lua_dates_and_cents_agree_with_python(
    client: Any, moment: int, over: int, rate: int
) -> None:
    written, cents = client.eval(PROBE, 0, moment, over, rate)
    assert written == iso(from_ms(moment))
    assert cents == overage_cents(over, rate)


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2024, 2, 29, 23, 59, 59, 999_000, tzinfo=UTC),  # a leap day, last millisecond
        datetime(2100, 3, 1, tzinfo=UTC),  # 2100 is not a leap year
        datetime(2000, 2, 29, 12, tzinfo=UTC),  # 2000 is
        datetime(2026, 12, 31, 23, 0, 0, 5000, tzinfo=UTC),
    ],
)
def test_lua_dates_at_calendar_edges(client: Any, moment: datetime) -> None:
    written, _ = client.eval(PROBE, 0, to_ms(moment), 0, 0)
    assert written == iso(moment)
