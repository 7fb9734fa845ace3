"""Enterprise contracts: overage, price overrides, price lock, orgs sharing one pool."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from gateway.catalog.models import Price
from tests.support.clock import ANCHOR as ANCHOR_TIME
from tests.support.clock import MovableClock
from tests.support.harness import Customer, Running
from tests.support.upstream import RecordingUpstream

ANCHOR = ANCHOR_TIME.isoformat()  # the cycle ends 2 s into each test

CONTRACT: dict[str, Any] = {
    "credits_per_cycle": 20,
    "price_cents": 500000,
    "concurrency": 4,
    "rate_limit_rps": 100,
    "overage": True,
    "overage_rate_cents_per_1k": 2500,
    "net_days": 7,
}


async def enterprise(gw: Running, **terms: Any) -> Customer:
    status, account = await gw.admin_call(
        "POST",
        "/admin/accounts",
        json={"name": "Big Co", "contract": {**CONTRACT, **terms}, "anchor": ANCHOR},
    )
    assert status == 201, account
    assert account["plan"] is None and account["contract"]["concurrency"] == 4
    status, key = await gw.admin_call("POST", f"/admin/orgs/{account['org_id']}/keys")
    assert status == 201
    return Customer(account["id"], account["org_id"], key["id"], key["key"])


async def test_overage_is_served_and_invoiced_at_renewal(gw: Running) -> None:
    c = await enterprise(gw)
    remaining = [
        int((await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Remaining"])
        for _ in range(5)
    ]
    assert remaining == [10, 0, -10, -20, -30]
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["credits"]["overage"] == 30 and account["credits"]["remaining"] == -30
    _, _, credits = await gw.call("GET", "/v1/credits", c.key)
    assert credits["remaining"] == -30
    await asyncio.sleep(2.1)
    _, body = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}/billing")
    assert [e["type"] for e in body["entries"]] == ["renew", "overage", "subscribe"]
    overage = body["entries"][1]
    assert overage["credits"] == 30
    assert overage["amount_cents"] == 75  # 30 x 2500 / 1000
    assert overage["occurred_at"] == "2026-03-15T10:00:00.000Z"
    assert overage["due_at"] == "2026-03-22T10:00:00.000Z"
    assert overage["cycle_start"] == "2026-02-15T10:00:00.000Z"
    assert body["entries"][0]["amount_cents"] == 500000
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["credits"]["remaining"] == 20


async def test_overage_of_a_request_answered_after_the_renewal_is_billed(
    gw: Running, clock: MovableClock, upstream: RecordingUpstream
) -> None:
    c = await enterprise(gw, credits_per_cycle=0, prices={"/v1/monitor/flat": {"base": 1000}})
    slow = asyncio.create_task(gw.call("POST", "/v1/monitor/flat?sleep=1", c.key))
    while not upstream.requests:
        await asyncio.sleep(0.01)
    clock.jump(timedelta(seconds=3))  # the cycle ends while the request is in flight
    _, _, account = await gw.call("GET", "/v1/account", c.key)  # renews: nothing over yet
    assert account["cycle"]["start"] == "2026-03-15T10:00:00.000Z"
    status, headers, _ = await slow
    assert status == 200 and headers["X-Credits-Charged"] == "1000"
    _, _, log = await gw.call("GET", "/v1/account/requests", c.key)
    assert log["requests"][0]["credits"] == 1000
    _, body = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}/billing")
    assert [e["type"] for e in body["entries"]] == ["overage", "renew", "subscribe"]
    overage = body["entries"][0]
    assert overage["credits"] == 1000 and overage["amount_cents"] == 2500  # 1000 x 2500 / 1000
    assert overage["cycle_start"] == "2026-02-15T10:00:00.000Z"
    assert overage["cycle_end"] == "2026-03-15T10:00:00.000Z"
    assert overage["due_at"] == "2026-03-22T10:00:00.000Z"  # the cycle's, as at renewal
    assert overage["occurred_at"] > "2026-03-15T10:00:00.000Z"
    # The late charge belongs to the closed cycle: the new one starts untouched (R7).
    _, _, account = await gw.call("GET", "/v1/account", c.key)
    assert account["credits"]["used"] == 0 and account["credits"]["overage"] == 0


async def test_overage_rounds_half_up_to_cents(gw: Running) -> None:
    c = await enterprise(gw, overage_rate_cents_per_1k=1050)  # 10 credits over: 10.5 cents
    for _ in range(3):
        await gw.call("POST", "/v1/monitor/flat", c.key)
    await asyncio.sleep(2.1)
    _, body = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}/billing")
    assert body["entries"][1]["type"] == "overage" and body["entries"][1]["amount_cents"] == 11


async def test_no_overage_contract_stops_at_the_allocation(gw: Running) -> None:
    c = await enterprise(gw, overage=False)
    statuses = [(await gw.call("POST", "/v1/monitor/flat", c.key))[0] for _ in range(3)]
    assert statuses == [200, 200, 403]


async def test_price_override_and_enterprise_only_route(gw: Running) -> None:
    c = await enterprise(gw, prices={"/v1/monitor/flat": {"base": 3}})
    _, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert headers["X-Credits-Charged"] == "3"
    status, headers, _ = await gw.call("POST", "/v1/enterprise/batch", c.key)
    assert status == 200 and headers["X-Credits-Charged"] == "5"
    status, body = await gw.admin_call(
        "POST",
        "/admin/accounts",
        json={"name": "x", "contract": {**CONTRACT, "prices": {"/v1/nope": {"base": 1}}}},
    )
    assert status == 400 and body["error"]["details"]["field"] == "contract.prices./v1/nope"


async def test_price_lock_survives_a_catalog_change(gw: Running) -> None:
    locked = await enterprise(gw, price_locked_until="2027-01-01T00:00:00Z", credits_per_cycle=1000)
    unlocked = await enterprise(gw, credits_per_cycle=1000)
    public = await gw.new_customer("lite")
    catalog = gw.gw.catalog.current.catalog
    routes = tuple(
        r.model_copy(update={"price": Price(base=50)}) if r.path == "/v1/monitor/flat" else r
        for r in catalog.routes
    )
    gw.gw.catalog.swap(catalog.model_copy(update={"routes": routes}))  # what a reload does
    charged = {
        name: (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"]
        for name, c in (("locked", locked), ("unlocked", unlocked), ("public", public))
    }
    assert charged == {"locked": "10", "unlocked": "50", "public": "50"}


async def test_price_lock_ends(gw: Running, clock: MovableClock) -> None:
    c = await enterprise(gw, price_locked_until="2026-03-20T00:00:00Z", credits_per_cycle=1000)
    catalog = gw.gw.catalog.current.catalog
    routes = tuple(
        r.model_copy(update={"price": Price(base=50)}) if r.path == "/v1/monitor/flat" else r
        for r in catalog.routes
    )
    gw.gw.catalog.swap(catalog.model_copy(update={"routes": routes}))
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "10"
    clock.jump(timedelta(days=6))
    assert (await gw.call("POST", "/v1/monitor/flat", c.key))[1]["X-Credits-Charged"] == "50"


async def test_orgs_share_the_pool_with_their_own_concurrency(
    gw: Running, upstream: RecordingUpstream
) -> None:
    c = await enterprise(gw, credits_per_cycle=100000)
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/orgs", json={"name": "staging", "concurrency": 1}
    )
    assert status == 409 and body["error"]["details"]["field"] == "concurrency"
    status, body = await gw.admin_call("PATCH", f"/admin/orgs/{c.org_id}", json={"concurrency": 2})
    assert status == 200 and body["concurrency"] == 2
    status, org2 = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/orgs", json={"name": "staging", "concurrency": 2}
    )
    assert status == 201
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/orgs", json={"name": "third", "concurrency": 1}
    )
    assert status == 409
    status, body = await gw.admin_call(
        "PATCH", f"/admin/orgs/{org2['id']}", json={"concurrency": 3}
    )
    assert status == 409
    _, key2 = await gw.admin_call("POST", f"/admin/orgs/{org2['id']}/keys")
    calls = [
        gw.call("POST", "/v1/monitor/flat?sleep=0.3", k)
        for k in (c.key, key2["key"])
        for _ in range(4)
    ]
    results = await asyncio.gather(*calls)
    assert upstream.max_in_flight[c.org_id] == 2
    assert upstream.max_in_flight[org2["id"]] == 2
    assert sorted(r[0] for r in results) == [200] * 4 + [429] * 4
    _, account = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}")
    assert [o["concurrency"] for o in account["orgs"]] == [2, 2]
    assert account["credits"]["used"] == 40  # one pool for both orgs
    # A contract whose concurrency is below the orgs' shares is refused, nothing applied.
    status, body = await gw.admin_call(
        "PUT", f"/admin/accounts/{c.account_id}/contract", json={**CONTRACT, "concurrency": 3}
    )
    assert status == 409
    _, account = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}")
    assert account["contract"]["concurrency"] == 4


async def test_public_account_moves_to_a_contract(gw: Running, upstream: RecordingUpstream) -> None:
    c = await gw.new_customer("lite")
    status, _, body = await gw.call("POST", "/v1/enterprise/batch", c.key)
    assert status == 403 and body["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
    status, body = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/orgs", json={"name": "second", "concurrency": 1}
    )
    assert status == 409
    status, account = await gw.admin_call(
        "PUT",
        f"/admin/accounts/{c.account_id}/contract",
        json={**CONTRACT, "prices": {"/v1/monitor/flat": {"base": 4}}},
    )
    assert status == 200, account
    assert account["plan"] is None and account["kind"] == "enterprise"
    assert account["orgs"][0]["concurrency"] == 4
    assert account["credits"]["allocation"] == 20
    status, headers, _ = await gw.call("POST", "/v1/monitor/flat", c.key)
    assert status == 200 and headers["X-Credits-Charged"] == "4"  # the cached price was replaced
    assert headers["X-Concurrent-Limit"] == "4"
    assert (await gw.call("POST", "/v1/enterprise/batch", c.key))[0] == 200
    for path, body_ in (
        ("/v1/account/subscription", {"plan": "hobby"}),
        ("/v1/account/subscription/preview", {"plan": "hobby"}),
        ("/v1/account/subscription/cancel", None),
    ):
        status, _, body = await gw.call("POST", path, c.key, json=body_)
        assert status == 403 and body["error"]["code"] == "INSUFFICIENT_PERMISSIONS"
    _, _, history = await gw.call("GET", "/v1/account/billing", c.key)
    assert history["entries"][0]["description"] == "Enterprise contract signed"


async def test_an_amendment_is_recorded_as_such_and_charges_nothing(gw: Running) -> None:
    c = await enterprise(gw)
    status, account = await gw.admin_call(
        "PUT",
        f"/admin/accounts/{c.account_id}/contract",
        json={**CONTRACT, "credits_per_cycle": 50, "price_cents": 700000},
    )
    assert status == 200 and account["credits"]["allocation"] == 50
    _, _, history = await gw.call("GET", "/v1/account/billing", c.key)
    amended, signed = history["entries"]
    assert (amended["type"], amended["amount_cents"], amended["credits"]) == (
        "contract_amended",
        0,
        50,
    )
    assert (signed["type"], signed["amount_cents"]) == ("subscribe", 500000)


@pytest.mark.parametrize(
    ("terms", "field"),
    [
        ({"credits_per_cycle": -1}, "credits_per_cycle"),
        ({"concurrency": 0}, "concurrency"),
        ({"price_locked_until": "soon"}, "price_locked_until"),
        ({"price_locked_until": "2027-01-01T00:00:00"}, "price_locked_until"),
        ({"surprise": 1}, "surprise"),
    ],
)
async def test_bad_contracts_name_the_field(gw: Running, terms: dict[str, Any], field: str) -> None:
    c = await gw.new_customer("lite")
    status, body = await gw.admin_call(
        "PUT", f"/admin/accounts/{c.account_id}/contract", json={**CONTRACT, **terms}
    )
    assert status == 400, body
    assert body["error"]["details"]["field"] == field
    _, account = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}")
    assert account["kind"] == "public" and account["plan"] == "lite"


async def test_an_idempotency_key_belongs_to_its_org(
    gw: Running, upstream: RecordingUpstream
) -> None:
    """Two orgs of one account may use the same Idempotency-Key for the same request: each
    org's retry replays its own response, never the other org's (SPEC 4)."""
    c = await enterprise(gw, credits_per_cycle=100000)
    await gw.admin_call("PATCH", f"/admin/orgs/{c.org_id}", json={"concurrency": 2})
    _, org2 = await gw.admin_call(
        "POST", f"/admin/accounts/{c.account_id}/orgs", json={"name": "staging", "concurrency": 2}
    )
    _, key2 = await gw.admin_call("POST", f"/admin/orgs/{org2['id']}/keys")
    same = {"json": {"q": 1}, "headers": {"Idempotency-Key": "order-42"}}
    first = await gw.call("POST", "/v1/monitor/flat", c.key, **same)
    other = await gw.call("POST", "/v1/monitor/flat", key2["key"], **same)
    assert first[0] == other[0] == 200
    assert "Idempotent-Replayed" not in other[1]
    assert [seen.headers["X-Gateway-Org"] for seen in upstream.requests] == [c.org_id, org2["id"]]
    # Each org's own retry replays its own answer.
    for key in (c.key, key2["key"]):
        status, headers, _ = await gw.call("POST", "/v1/monitor/flat", key, **same)
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert len(upstream.requests) == 2
    _, account = await gw.admin_call("GET", f"/admin/accounts/{c.account_id}")
    assert account["credits"]["used"] == 20
