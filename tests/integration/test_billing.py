"""The billing lifecycle through the HTTP APIs, on a real redis-server, across cycle boundaries.

The gateway's clock starts at a chosen instant and runs at real speed; accounts are created
with back-dated anchors so that a cycle ends a couple of seconds into the test."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.support.clock import ANCHOR, MovableClock
from tests.support.harness import Customer, Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream


async def customer(gw: Running, plan: str = "lite", anchor: datetime = ANCHOR) -> Customer:
    return await gw.new_customer(plan, anchor=anchor.isoformat())


async def entries(gw: Running, c: Customer) -> list[dict[str, Any]]:
    status, _, body = await gw.call("GET", "/v1/account/billing", c.key)
    assert status == 200, body
    return list(body["entries"])


async def test_renewal_restores_the_allocation(gw: Running, clock: MovableClock) -> None:
    c = await customer(gw)
    for _ in range(3):
        assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200
    _, _, credits = await gw.call("GET", "/v1/credits", c.key)
    assert credits == {
        "remaining": 37470,
        "perCycle": 37500,
        "cycleResetsAt": "2026-03-15T10:00:00.000Z",
    }
    await asyncio.sleep(2.1)  # real time: the cycle ends
    status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 200
    assert headers["X-Credits-Remaining"] == str(37500 - 10)
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["cycle"] == {
        "start": "2026-03-15T10:00:00.000Z",
        "end": "2026-04-15T10:00:00.000Z",
    }
    assert account["credits"]["used"] == 10
    history = await entries(gw, c)
    assert [e["type"] for e in history] == ["renew", "subscribe"]
    renew = history[0]
    assert renew["amount_cents"] == 3000 and renew["credits"] == 37500
    assert renew["cycle_start"] == "2026-03-15T10:00:00.000Z"
    assert renew["occurred_at"] == "2026-03-15T10:00:00.000Z"


async def test_idle_account_catches_up_one_renewal_per_cycle(
    gw: Running, clock: MovableClock
) -> None:
    c = await customer(gw)
    clock.jump(timedelta(days=93))  # past 03-15, 04-15, 05-15 and 06-15
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["cycle"]["start"] == "2026-06-15T10:00:00.000Z"
    history = await entries(gw, c)
    assert [e["type"] for e in history] == ["renew"] * 4 + ["subscribe"]
    assert [e["cycle_start"][:10] for e in history[:4]] == [
        "2026-06-15",
        "2026-05-15",
        "2026-04-15",
        "2026-03-15",
    ]


async def test_cancel_then_the_cycle_ends(gw: Running, upstream: RecordingUpstream) -> None:
    c = await customer(gw)
    status, _, body = await gw.call("POST", "/v1/account/subscription/cancel", c.key)
    assert status == 200 and body["effective_at"] == "2026-03-15T10:00:00.000Z"
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["status"] == "canceling"
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200  # service until the end
    status, _, body = await gw.call("POST", "/v1/account/subscription/cancel", c.key)
    assert status == 409
    await asyncio.sleep(2.1)
    status, _, body = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 403 and body["error"]["code"] == "SUBSCRIPTION_INACTIVE"
    assert len(upstream.requests) == 1
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["status"] == "canceled"
    # Nothing left to spend and no reset to wait for (SPEC 6).
    _, _, credits = await gw.call("GET", "/v1/credits", c.key)
    assert credits == {"remaining": 0, "perCycle": 37500, "cycleResetsAt": None}
    assert [e["type"] for e in await entries(gw, c)] == [
        "canceled",
        "cancel_scheduled",
        "subscribe",
    ]
    status, _, body = await gw.call("POST", "/v1/account/subscription/reactivate", c.key)
    assert status == 409 and body["error"]["code"] == "CONFLICT"


async def test_reactivate_before_the_end_keeps_dates_and_charges_nothing(gw: Running) -> None:
    c = await customer(gw)
    await gw.call("POST", "/v1/account/subscription/cancel", c.key)
    status, _, body = await gw.call("POST", "/v1/account/subscription/reactivate", c.key)
    assert status == 200 and body["entry"]["amount_cents"] == 0
    await asyncio.sleep(2.1)
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["status"] == "active"
    assert account["cycle"]["start"] == "2026-03-15T10:00:00.000Z"
    assert [e["type"] for e in await entries(gw, c)] == [
        "renew",
        "reactivated",
        "cancel_scheduled",
        "subscribe",
    ]


async def test_subscribe_again_after_cancellation_starts_a_new_anchor(
    gw: Running, clock: MovableClock
) -> None:
    c = await customer(gw)
    await gw.call("POST", "/v1/account/subscription/cancel", c.key)
    clock.jump(timedelta(days=10))
    status, _, body = await gw.call(
        "POST", "/v1/account/subscription", c.key, json={"plan": "hobby"}
    )
    assert status == 200, body
    assert body["change"] == "subscribe" and body["charge_cents"] == 10000
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["status"] == "active" and account["plan"] == "hobby"
    assert account["cycle"]["start"].startswith("2026-03-25T09:59:5")
    assert account["credits"]["remaining"] == 250000
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[0] == 200


async def test_pending_downgrade_applies_at_the_boundary(gw: Running) -> None:
    c = await customer(gw, "hobby")
    status, _, preview = await gw.call(
        "POST", "/v1/account/subscription/preview", c.key, json={"plan": "lite"}
    )
    assert status == 200
    assert preview["change"] == "downgrade" and preview["charge_cents"] == 0
    assert preview["effective_at"] == "2026-03-15T10:00:00.000Z"
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["pending_change"] is None  # the preview changed nothing
    status, _, _ = await gw.call("POST", "/v1/account/subscription", c.key, json={"plan": "lite"})
    assert status == 200
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["plan"] == "hobby"
    assert account["pending_change"] == {"plan": "lite", "effective_at": "2026-03-15T10:00:00.000Z"}
    await asyncio.sleep(2.1)
    status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 200 and headers["X-Concurrent-Limit"] == "10"
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["plan"] == "lite" and account["pending_change"] is None
    assert account["credits"]["allocation"] == 37500
    history = await entries(gw, c)
    assert [e["type"] for e in history] == [
        "renew",
        "downgrade_applied",
        "downgrade_scheduled",
        "subscribe",
    ]
    assert history[0]["amount_cents"] == 3000


async def test_upgrade_prorates_and_keeps_used_credits(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    # SPEC R3's worked example: cycle 03-15 -> 04-15, $30 -> $100 at 03-25T10:00Z: 4742 cents.
    clock = MovableClock(datetime(2026, 3, 25, 10, 0, 0, tzinfo=UTC))
    gw = await start_gateway(redis_url, catalog_for(upstream.url), clock=clock)
    try:
        c = await gw.new_customer("lite", anchor="2026-01-15T00:00:00Z")
        for _ in range(5):
            await gw.call("POST", "/v1/monitor/flat", c.key)
        status, _, preview = await gw.call(
            "POST", "/v1/account/subscription/preview", c.key, json={"plan": "hobby"}
        )
        assert status == 200
        assert preview["change"] == "upgrade" and preview["charge_cents"] == 4742
        assert preview["days_left"] == 21 and preview["days_total"] == 31
        status, _, done = await gw.call(
            "POST", "/v1/account/subscription", c.key, json={"plan": "hobby"}
        )
        assert status == 200 and done["charge_cents"] == 4742
        assert done["entry"]["type"] == "upgrade" and done["entry"]["amount_cents"] == 4742
        _, _, account = await gw.call("GET", "/v1/account", c.key)
        assert account["plan"] == "hobby"
        assert account["credits"]["remaining"] == 250000 - 50  # R4: new credits - used
        assert account["cycle"] == {
            "start": "2026-03-15T00:00:00.000Z",
            "end": "2026-04-15T00:00:00.000Z",
        }
        _, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
        assert headers["X-Concurrent-Limit"] == "20"
        history = await entries(gw, c)
        assert history[0]["type"] == "upgrade" and history[0]["from_plan"] == "lite"
        # An upgrade clears a pending downgrade; same plan and unknown plans are refused.
        status, _, body = await gw.call(
            "POST", "/v1/account/subscription", c.key, json={"plan": "hobby"}
        )
        assert status == 409
        status, _, body = await gw.call(
            "POST", "/v1/account/subscription", c.key, json={"plan": "diamond"}
        )
        assert status == 400 and body["error"]["details"]["field"] == "plan"
        status, _, body = await gw.call("POST", "/v1/account/subscription", c.key, json={})
        assert status == 400 and body["error"]["details"]["field"] == "plan"
    finally:
        await gw.close()


async def test_two_instances_renew_once(
    redis_url: str, upstream: RecordingUpstream, clock: MovableClock
) -> None:
    catalog = catalog_for(upstream.url)
    a = await start_gateway(redis_url, catalog, clock=clock)
    b = await start_gateway(redis_url, catalog, clock=clock)
    try:
        c = await customer(a)
        clock.jump(timedelta(seconds=5))
        calls = [(a if i % 2 else b).call("POST", "/v1/monitor/flat", c.key) for i in range(20)]
        calls += [a.gw.billing.current(c.account_id, catalog.plans, clock()) for _ in range(3)]
        calls += [b.gw.billing.current(c.account_id, catalog.plans, clock()) for _ in range(3)]
        results = await asyncio.gather(*calls)
        assert [e["type"] for e in await entries(a, c)] == ["renew", "subscribe"]
        served = [r for r in results[:20] if r[0] == 200]
        assert len(served) >= 10  # the lite plan's concurrency limit is 10
        _, _, account = await a.call("GET", "/v1/account", c.key)
        assert account["credits"]["used"] == 10 * len(served)
    finally:
        await a.close()
        await b.close()


async def test_request_across_the_boundary_is_charged_to_its_own_cycle(gw: Running) -> None:
    c = await customer(gw)
    slow = asyncio.create_task(gw.call("POST", "/v1/monitor/flat?sleep=1.5", c.key))
    await asyncio.sleep(0.3)
    await asyncio.sleep(2.0)  # the boundary passes while it is in flight
    _, _, account = await gw.call("GET", "/v1/account", c.key)  # renews
    assert account["cycle"]["start"] == "2026-03-15T10:00:00.000Z"
    status, headers, _ = await slow
    assert status == 200 and headers["X-Credits-Charged"] == "10"
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["credits"] == {
        "allocation": 37500,
        "used": 0,
        "held": 0,
        "remaining": 37500,
        "overage": 0,
    }
    _, _, log = await gw.call("GET", "/v1/account/requests", c.key)
    assert log["requests"][0]["credits"] == 10


async def test_usage_requests_and_credits_views(gw: Running) -> None:
    c = await customer(gw)
    await gw.call("POST", "/v1/monitor/flat", c.key)
    await gw.call("POST", "/v1/monitor/chatgpt", c.key, json={"pages": 2})
    await gw.call("POST", "/v1/monitor/flat?status=500", c.key)
    _, _, usage = await gw.call("GET", "/v1/account/usage", c.key)
    assert usage["granularity"] == "day"
    rows = {(b["start"], b["route"]): (b["requests"], b["credits"]) for b in usage["buckets"]}
    assert rows == {
        ("2026-03-15T00:00:00.000Z", "/v1/monitor/flat"): (2, 10),
        ("2026-03-15T00:00:00.000Z", "/v1/monitor/chatgpt"): (1, 9),
    }
    assert {b["org_id"] for b in usage["buckets"]} == {c.org_id}
    _, _, hourly = await gw.call(
        "GET",
        "/v1/account/usage?granularity=hour&from=2026-03-15T09:00:00Z&to=2026-03-15T10:00:00Z",
        c.key,
    )
    assert {b["start"] for b in hourly["buckets"]} == {"2026-03-15T09:00:00.000Z"}
    _, _, recent = await gw.call("GET", "/v1/account/requests?limit=2", c.key)
    assert [(r["route"], r["status"], r["credits"]) for r in recent["requests"]] == [
        ("/v1/monitor/flat", 500, 0),
        ("/v1/monitor/chatgpt", 200, 9),
    ]
    assert all(r["id"].startswith("req_") and r["latency_ms"] >= 0 for r in recent["requests"])
    for query, field in (
        ("granularity=week", "granularity"),
        ("from=yesterday", "from"),
        ("from=2025-01-01T00:00:00Z", "from"),
        ("from=2026-03-15T00:00:00Z&to=2026-03-14T00:00:00Z", "to"),
        # Instants whose UTC conversion leaves the calendar (years 10000 and 0).
        ("from=9999-12-31T23:00:00-05:00&to=9999-12-31T23:30:00-05:00", "from"),
        ("from=0001-01-01T00:00:00%2B05:00", "from"),
        ("from=2026-03-15T00:00:00Z&to=9999-12-31T23:00:00-05:00", "to"),
    ):
        status, _, body = await gw.call("GET", f"/v1/account/usage?{query}", c.key)
        assert status == 400 and body["error"]["details"]["field"] == field, query
    status, _, body = await gw.call("GET", "/v1/account/requests?limit=0", c.key)
    assert status == 400


async def test_ops_credit_adjustment(gw: Running) -> None:
    c = await customer(gw)
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/credits", json={"delta": 500, "reason": "goodwill"}
    )
    assert status == 201 and body["type"] == "adjustment" and body["credits"] == 500
    _, _, credits = await gw.call("GET", "/v1/credits", c.key)
    assert credits["remaining"] == 38000
    for bad, field in (
        ({"delta": 0, "reason": "x"}, "delta"),
        ({"delta": 5}, "reason"),
        ({"delta": -(10**12) - 1, "reason": "x"}, "delta"),
        ({"delta": "5", "reason": "x"}, "delta"),
    ):
        status, body = await gw.admin_call(
            "POST", f"/admin/accounts/{c.account_id}/credits", json=bad
        )
        assert status == 400 and body["error"]["details"]["field"] == field, bad
    _, body = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}/billing")
    assert [e["type"] for e in body["entries"]] == ["adjustment", "subscribe"]
    entry = body["entries"][0]
    assert set(entry) >= {
        "id",
        "account_id",
        "type",
        "occurred_at",
        "cycle_start",
        "cycle_end",
        "amount_cents",
        "currency",
        "credits",
        "description",
    }


async def test_credit_adjustments_never_take_a_public_balance_below_zero(gw: Running) -> None:
    c = await customer(gw)
    assert (await gw.call("POST", "/v1/monitor/chatgpt", c.key, json={"pages": 1}))[0] == 200
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    used = account["credits"]["used"]
    assert used > 0
    credits_url = f"/admin/accounts/{c.account_id}/credits"
    status, body = await gw.admin_call("POST", credits_url, json={"delta": -37500, "reason": "x"})
    assert status == 409 and body["error"]["code"] == "CONFLICT", body
    assert body["error"]["details"]["field"] == "delta"
    assert body["error"]["details"]["min_delta"] == used - 37500
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["credits"]["allocation"] == 37500 and account["credits"]["overage"] == 0
    # Taking away exactly what is left is allowed: the balance is then zero.
    status, body = await gw.admin_call(
        "POST", credits_url, json={"delta": used - 37500, "reason": "x"}
    )
    assert status == 201, body
    status, _, body = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 403 and body["error"]["code"] == "INSUFFICIENT_CREDITS"
    assert body["error"]["details"]["remaining"] == 0
    _, _, credits = await gw.call("GET", "/v1/credits", c.key)
    assert credits["remaining"] == 0
    _, body = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}/billing")
    assert [e["type"] for e in body["entries"]] == ["adjustment", "subscribe"]


@pytest.mark.parametrize("delta", [9223372036854775807, -9223372036854775808, 10**12 + 1])
async def test_a_credit_delta_beyond_10_to_the_12_is_400(gw: Running, delta: int) -> None:
    c = await customer(gw)
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/credits", json={"delta": delta, "reason": "x"}
    )
    assert status == 400 and body["error"]["code"] == "VALIDATION_ERROR"
    assert body["error"]["details"]["field"] == "delta"
    status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 200 and headers["X-Credits-Remaining"] == str(37500 - 10)
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/credits", json={"delta": 10**12, "reason": "x"}
    )
    assert status == 201
    _, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert headers["X-Credits-Remaining"] == str(10**12 + 37500 - 20)


async def test_admin_plan_change_cancel_reactivate(gw: Running) -> None:
    c = await customer(gw)
    base = f"/admin/accounts/{c.account_id}"
    status, body = await gw.admin_call("POST", f"{base}/subscription", json={"plan": "hobby"})
    assert status == 200 and body["change"] == "upgrade"
    assert (await gw.admin_call("POST", f"{base}/cancel"))[0] == 200
    assert (await gw.admin_call("POST", f"{base}/reactivate"))[0] == 200
    _, body = await gw.admin_call("GET", f"{base}/requests")
    assert body == {"requests": []}
    _, body = await gw.admin_call("GET", f"{base}/usage")
    assert body["buckets"] == []


async def test_the_sweeper_renews_an_untouched_account(
    redis_url: str, upstream: RecordingUpstream, clock: MovableClock
) -> None:
    gw = await start_gateway(redis_url, catalog_for(upstream.url), clock=clock, renewal_sweep_s=0.2)
    try:
        c = await customer(gw)
        billing_key = f"gw:{{acct:{c.account_id}}}:billing"
        assert await gw.gw.client.llen(billing_key) == 1
        await asyncio.sleep(2.6)  # nothing touches the account; only the sweeper runs
        assert await gw.gw.client.llen(billing_key) == 2
        raw = await gw.gw.client.hget(f"gw:{{acct:{c.account_id}}}:account", "cycle_start")
        assert raw == str(1773568800000)  # 2026-03-15T10:00:00Z
    finally:
        await gw.close()


async def test_an_anchor_with_an_offset_bills_the_cycles_of_its_utc_instant(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    # 03-31T01:00+02:00 is 03-30T23:00Z: every cycle starts on the 30th (clamped) at 23:00Z.
    clock = MovableClock(datetime(2026, 12, 1, tzinfo=UTC))
    gw = await start_gateway(redis_url, catalog_for(upstream.url), clock=clock)
    try:
        status, account = await gw.admin_call(
            "POST",
            "/admin/accounts",
            json={"name": "Tz", "plan": "lite", "anchor": "2026-03-31T01:00:00+02:00"},
        )
        assert status == 201, account
        assert account["anchor"] == "2026-03-30T23:00:00.000Z"
        assert account["cycle"] == {
            "start": "2026-11-30T23:00:00.000Z",
            "end": "2026-12-30T23:00:00.000Z",
        }
        clock.jump(timedelta(days=31))  # 2027-01-01: one cycle ended, not two
        _, account = await gw.admin_call("GET", f"/admin/accounts/{account['id']}")
        assert account["cycle"] == {
            "start": "2026-12-30T23:00:00.000Z",
            "end": "2027-01-30T23:00:00.000Z",
        }
        _, body = await gw.admin_call("GET", f"/admin/accounts/{account['id']}/billing")
        history = [(e["type"], e["cycle_start"], e["amount_cents"]) for e in body["entries"]]
        assert history == [
            ("renew", "2026-12-30T23:00:00.000Z", 3000),
            ("subscribe", "2026-11-30T23:00:00.000Z", 3000),
        ]
    finally:
        await gw.close()


async def test_the_sweeper_skips_an_account_it_cannot_renew(
    redis_url: str,
    upstream: RecordingUpstream,
    clock: MovableClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = await start_gateway(redis_url, catalog_for(upstream.url), clock=clock, renewal_sweep_s=0.2)
    try:
        broken, healthy = await customer(gw), await customer(gw)
        # What the old code wrote for the anchor 0001-01-01T00:00:00+05:00: an instant in year
        # 0 that no datetime can hold. It is first in line for the sweeper.
        client = gw.gw.client
        await client.hset(f"gw:{{acct:{broken.account_id}}}:account", "anchor", -62135614800000)
        await client.zadd("gw:cycle_ends", {broken.account_id: 0})
        healthy_billing = f"gw:{{acct:{healthy.account_id}}}:billing"
        with caplog.at_level(logging.ERROR, logger="gateway.app"):
            await asyncio.sleep(2.6)  # the healthy account's cycle ends; only the sweeper runs
        assert await client.llen(healthy_billing) == 2  # subscribe, renew
        raw = await client.hget(f"gw:{{acct:{healthy.account_id}}}:account", "cycle_start")
        assert raw == str(1773568800000)  # 2026-03-15T10:00:00Z
        assert any(
            r.getMessage() == f"renewal of {broken.account_id} skipped" for r in caplog.records
        )
    finally:
        await gw.close()


async def test_an_upgrade_is_prorated_from_the_price_the_account_pays(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    clock = MovableClock(datetime(2026, 3, 25, 10, 0, 0, tzinfo=UTC))
    catalog = catalog_for(upstream.url)
    gw = await start_gateway(redis_url, catalog, clock=clock)
    try:
        c = await gw.new_customer("lite", anchor="2026-01-15T00:00:00Z")  # pays $30
        lite = catalog.plans["lite"].model_copy(update={"price_cents": 9000})
        gw.gw.catalog.swap(catalog.model_copy(update={"plans": {**catalog.plans, "lite": lite}}))
        status, _, preview = await gw.call(
            "POST", "/v1/account/subscription/preview", c.key, json={"plan": "hobby"}
        )
        assert status == 200 and preview["charge_cents"] == 4742  # 7000 x 21/31, not 1000 x
        status, _, done = await gw.call(
            "POST", "/v1/account/subscription", c.key, json={"plan": "hobby"}
        )
        assert status == 200 and done["entry"]["amount_cents"] == 4742
    finally:
        await gw.close()


async def test_prorated_upgrade_credits_from_the_catalog(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    # One hour before the cycle ends (03-15 -> 04-15, T = 31): L = 1.
    clock = MovableClock(datetime(2026, 4, 14, 23, 0, 0, tzinfo=UTC))
    catalog = catalog_for(upstream.url)
    gw = await start_gateway(redis_url, catalog, clock=clock)
    try:
        full = await gw.new_customer("lite", anchor="2026-01-15T00:00:00Z")
        prorated = await gw.new_customer("lite", anchor="2026-01-15T00:00:00Z")
        status, _, done = await gw.call(
            "POST", "/v1/account/subscription", full.key, json={"plan": "hobby"}
        )
        assert status == 200 and done["charge_cents"] == 226 and done["allocation"] == 250000
        billing = catalog.billing.model_copy(update={"upgrade_credits": "prorated"})
        gw.gw.catalog.swap(catalog.model_copy(update={"billing": billing}))
        status, _, preview = await gw.call(
            "POST", "/v1/account/subscription/preview", prorated.key, json={"plan": "hobby"}
        )
        # 37500 + round-half-up(212500 x 1/31) = 44355; the charge does not change.
        assert preview["charge_cents"] == 226 and preview["allocation"] == 44355
        status, _, done = await gw.call(
            "POST", "/v1/account/subscription", prorated.key, json={"plan": "hobby"}
        )
        assert status == 200 and done["entry"]["credits"] == 44355
        _, _, credits = await gw.call("GET", "/v1/credits", prorated.key)
        assert credits["remaining"] == 44355 and credits["perCycle"] == 44355
    finally:
        await gw.close()
