"""RFC 7240 `Prefer: wait=N` as the gateway reads it (SPEC 10)."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from gateway.queue.waiting import preferred_wait


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ([], None),
        ([("Prefer", "wait=5")], 5),
        ([("Prefer", "WAIT=5")], 5),
        ([("Prefer", "return=minimal, wait=10")], 10),
        ([("Prefer", "respond-async; foo=bar, wait = 3")], 3),
        ([("Prefer", 'wait="7"')], 7),
        ([("Prefer", "wait=0")], 0),
        ([("Prefer", "return=minimal"), ("Prefer", "wait=2")], 2),
        ([("Prefer", "wait=-1")], None),
        ([("Prefer", "wait=1.5")], None),
        ([("Prefer", "wait=")], None),
        ([("Prefer", "wait")], None),
        ([("Prefer", "waiting=5")], None),
        ([("Prefer", "wait=\uff15")], None),  # a full-width digit is not a delta-seconds
    ],
)
def test_prefer_wait(headers: list[tuple[str, str]], expected: int | None) -> None:
    request = make_mocked_request("POST", "/v1/monitor/flat", headers=CIMultiDict(headers))
    assert preferred_wait(request) == expected
