"""The admin listener: token checks, account/org/key calls, probes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream

CONTRACT = {"credits_per_cycle": 1000, "price_cents": 500, "concurrency": 5, "rate_limit_rps": 50}


async def test_wrong_or_missing_token_is_401(gateway: Running) -> None:
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "test-admin-token"}):
        async with gateway.http.get(gateway.admin + "/admin/accounts/x", headers=headers) as r:
            body = await r.json()
            assert r.status == 401 and body["error"]["code"] == "UNAUTHORIZED"
            assert r.headers["WWW-Authenticate"] == "Bearer"


async def test_no_token_configured_disables_admin(
    redis_url: str, upstream: RecordingUpstream
) -> None:
    running = await start_gateway(redis_url, catalog_for(upstream.url), admin_token=None)
    try:
        status, body = await running.admin_call("POST", "/admin/accounts", json={})
        assert status == 403 and body["error"]["code"] == "ADMIN_DISABLED"
        async with running.http.get(running.admin + "/healthz") as r:
            assert r.status == 200
    finally:
        await running.close()


async def test_create_account_view_and_keys(gateway: Running) -> None:
    anchor = datetime(2026, 1, 31, 12, 0, tzinfo=UTC)
    status, account = await gateway.admin_call(
        "POST",
        "/admin/accounts",
        json={"name": "Acme", "plan": "hobby", "anchor": anchor.isoformat()},
    )
    assert status == 201
    assert account["id"].startswith("acct_") and account["org_id"].startswith("org_")
    assert account["plan"] == "hobby" and account["status"] == "active"
    start = datetime.fromisoformat(account["cycle"]["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(account["cycle"]["end"].replace("Z", "+00:00"))
    now = datetime.now(UTC)
    assert start <= now < end and start.hour == 12 and start.day in (28, 29, 30, 31)
    assert account["credits"]["allocation"] == 250000
    assert account["concurrency"]["limit"] == 20

    status, key = await gateway.admin_call("POST", f"/admin/orgs/{account['org_id']}/keys")
    assert status == 201 and key["key"].startswith("sk_live_") and len(key["key"]) == 40
    status, view = await gateway.admin_call("GET", f"/admin/accounts/{account['id']}")
    assert status == 200
    [org] = view["orgs"]
    assert org["id"] == account["org_id"] and org["concurrency"] == 20
    assert org["keys"] == [
        {
            "id": key["id"],
            "prefix": key["key"][:12],
            "created_at": org["keys"][0]["created_at"],
            "revoked": False,
        }
    ]
    # Only a hash is stored: the plaintext appears nowhere in Redis.
    client = gateway.gw.client
    for name in await client.keys("*"):
        kind = await client.type(name)
        if kind == "hash":
            assert key["key"] not in str(await client.hgetall(name))
        elif kind == "string":
            assert key["key"] not in str(await client.get(name))

    assert (await gateway.admin_call("DELETE", f"/admin/keys/{key['id']}"))[0] == 204
    _, view = await gateway.admin_call("GET", f"/admin/accounts/{account['id']}")
    assert view["orgs"][0]["keys"][0]["revoked"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "lite"}, "name"),
        ({"name": "x"}, "plan"),
        ({"name": "x", "plan": "platinum"}, "plan"),
        ({"name": "x", "plan": "lite", "anchor": "yesterday"}, "anchor"),
        ({"name": "x", "plan": "lite", "anchor": "2030-01-01T00:00:00Z"}, "anchor"),
        ({"name": "x", "plan": "lite", "colour": "red"}, "colour"),
        ({"name": "", "plan": "lite"}, "name"),
    ],
)
async def test_bad_account_input_names_the_field(
    gateway: Running, body: dict[str, str], field: str
) -> None:
    status, reply = await gateway.admin_call("POST", "/admin/accounts", json=body)
    assert status == 400, reply
    assert reply["error"]["code"] == "VALIDATION_ERROR"
    assert reply["error"]["details"]["field"] == field


@pytest.mark.parametrize(
    ("anchor", "words"),
    [
        ("0001-01-01T00:00:00+05:00", "before 2000-01-01"),  # its UTC instant is in year 0
        ("0001-01-01T05:00:00+05:00", "before 2000-01-01"),
        ("1999-12-31T23:59:59Z", "before 2000-01-01"),
        ("2000-01-01T00:30:00+01:00", "before 2000-01-01"),
        ("9999-12-31T23:59:59-05:00", "future"),
        ("2026-01-01T00:00:00", "UTC offset"),
    ],
)
async def test_an_anchor_out_of_range_is_400_and_writes_nothing(
    gateway: Running, anchor: str, words: str
) -> None:
    for body in (
        {"name": "x", "plan": "lite", "anchor": anchor},
        {"name": "x", "contract": CONTRACT, "anchor": anchor},
    ):
        status, reply = await gateway.admin_call("POST", "/admin/accounts", json=body)
        assert status == 400, reply
        assert reply["error"]["code"] == "VALIDATION_ERROR"
        assert reply["error"]["details"]["field"] == "anchor"
        assert words in reply["error"]["message"]
    # Nothing was written: no account, no index, nothing queued for the renewal sweeper.
    assert await gateway.gw.client.keys("gw:*") == []


async def test_bad_json_and_unknown_ids(gateway: Running) -> None:
    status, reply = await gateway.admin_call("POST", "/admin/accounts", data=b"{nope")
    assert status == 400 and reply["error"]["code"] == "VALIDATION_ERROR"
    for method, path in (
        ("GET", "/admin/accounts/acct_missing"),
        ("POST", "/admin/orgs/org_missing/keys"),
        ("DELETE", "/admin/keys/key_missing"),
        ("GET", "/admin/no-such-call"),
    ):
        status, reply = await gateway.admin_call(method, path)
        assert status == 404 and reply["error"]["code"] == "RESOURCE_NOT_FOUND", path


async def test_back_dated_anchor_gives_the_current_cycle(gateway: Running) -> None:
    anchor = datetime.now(UTC) - timedelta(days=45)
    status, account = await gateway.admin_call(
        "POST",
        "/admin/accounts",
        json={"name": "Old", "plan": "lite", "anchor": anchor.isoformat()},
    )
    assert status == 201
    start = datetime.fromisoformat(account["cycle"]["start"].replace("Z", "+00:00"))
    assert timedelta(days=10) < datetime.now(UTC) - start < timedelta(days=20)


async def test_probes_and_metrics(gateway: Running) -> None:
    async with gateway.http.get(gateway.admin + "/readyz") as r:
        assert r.status == 200 and (await r.json())["status"] == "ready"
    c = await gateway.new_customer()
    await gateway.call("POST", "/v1/monitor/flat", c.key)
    await gateway.call("POST", "/v1/monitor/flat")
    async with gateway.http.get(gateway.admin + "/metrics") as r:
        text = await r.text()
    assert (
        'gateway_requests_total{code="200",outcome="charged",route="/v1/monitor/flat"} 1.0' in text
    )
    assert (
        'gateway_requests_total{code="401",outcome="rejected_auth",route="/v1/monitor/flat"}'
        " 1.0" in text
    )
    assert 'gateway_credits_charged_total{route="/v1/monitor/flat"} 10.0' in text
    assert c.key not in text
