"""The admin API (SPEC section 7), health probes and /metrics on the admin listener."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.api.schemas import CreateAccount, admin_account_view, parse
from gateway.billing.cycles import cycle_at
from gateway.clock import iso
from gateway.context import GATEWAY
from gateway.errors import NotFound, ValidationFailed
from gateway.store.accounts import AccountRecord

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        await gw.ledger.call("lookup", gw.client.ping())
    except Exception as exc:
        return web.json_response(
            {"status": "unavailable", "store": str(exc), "catalog": gw.catalog.current.version},
            status=503,
        )
    return web.json_response({"status": "ready", "catalog": gw.catalog.current.version})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[GATEWAY].metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.post("/admin/accounts")
async def create_account(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await parse(request, CreateAccount)
    plans = gw.catalog.current.catalog.plans
    plan = plans.get(body.plan)
    if plan is None:
        raise ValidationFailed(
            f"plan: unknown plan {body.plan!r}", details={"field": "plan", "known": sorted(plans)}
        )
    now = gw.clock()
    anchor = body.anchor or now
    if anchor.tzinfo is None:
        raise ValidationFailed("anchor: give a UTC offset, e.g. Z", details={"field": "anchor"})
    if anchor > now:
        raise ValidationFailed("anchor: must not be in the future", details={"field": "anchor"})
    record = await gw.accounts.create_public(
        name=body.name, plan_name=body.plan, plan=plan, anchor=anchor, now=now
    )
    start, end = cycle_at(record.anchor, now)
    view = admin_account_view(record)
    view["cycle"] = {"start": iso(start), "end": iso(end)}
    return web.json_response(view, status=201)


@routes.get("/admin/accounts/{id}")
async def get_account(request: web.Request) -> web.Response:
    return web.json_response(admin_account_view(await _account(request, request.match_info["id"])))


@routes.post("/admin/orgs/{id}/keys")
async def create_key(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    created = await gw.accounts.create_key(request.match_info["id"], gw.clock())
    if created is None:
        raise NotFound("No such organization", details={"org_id": request.match_info["id"]})
    record, plaintext = created
    return web.json_response(
        {
            "id": record.id,
            "key": plaintext,
            "org_id": record.org_id,
            "prefix": record.prefix,
            "created_at": iso(record.created_at),
        },
        status=201,
    )


@routes.delete("/admin/keys/{id}")
async def revoke_key(request: web.Request) -> web.Response:
    if not await request.app[GATEWAY].accounts.revoke_key(request.match_info["id"]):
        raise NotFound("No such key", details={"key_id": request.match_info["id"]})
    return web.Response(status=204)


async def _account(request: web.Request, account_id: str) -> AccountRecord:
    gw = request.app[GATEWAY]
    record = await gw.accounts.get(account_id, gw.now_ms())
    if record is None:
        raise NotFound("No such account", details={"account_id": account_id})
    return record
