"""The admin API (SPEC section 7), health probes and /metrics on the admin listener."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from gateway.api import operations
from gateway.api.openapi import admin_openapi
from gateway.api.schemas import (
    CreateAccount,
    CreditAdjustment,
    NewOrg,
    OrgPatch,
    PlanChoice,
    admin_account_view,
    parse,
)
from gateway.billing.contract import Contract
from gateway.billing.cycles import check_anchor
from gateway.clock import iso
from gateway.context import GATEWAY, Gateway
from gateway.errors import (
    CatalogInvalid,
    ConfigRejected,
    NotFound,
    StoreError,
    ValidationFailed,
)
from gateway.metrics import exposition
from gateway.reload import reload_catalog, tell_siblings
from gateway.store import keys
from gateway.store.accounts import AccountRecord

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    """Ready when the store answers and a catalog is loaded (SPEC section 8)."""
    gw = request.app[GATEWAY]
    state = {
        "catalog": gw.catalog.current.version,
        "settlements_pending": len(gw.spool),
        "breaker": "open" if gw.ledger.breaker.is_open else "closed",
    }
    try:
        await gw.ledger.call("lookup", gw.client.ping())
    except StoreError as exc:
        return web.json_response({"status": "unavailable", "store": str(exc), **state}, status=503)
    return web.json_response({"status": "ready", **state})


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = exposition(gw.metrics.registry)
    try:  # a gauge of the store, not of a process: read at scrape (SPEC 8)
        queued = await gw.dispatcher.store.queued_total()
    except StoreError:
        queued = None
    if queued is not None:
        body += (
            b"# HELP gateway_async_queued Async tasks queued in the store\n"
            b"# TYPE gateway_async_queued gauge\n"
            b"gateway_async_queued %d\n" % queued
        )
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@routes.get("/admin/openapi.json")
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(admin_openapi())


@routes.post("/admin/reload")
async def reload(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    try:
        snapshot = reload_catalog(gw)
    except CatalogInvalid as exc:
        raise ConfigRejected(details={"problems": exc.problems}) from exc
    tell_siblings()
    return web.json_response({"version": snapshot.version})


@routes.post("/admin/accounts")
async def create_account(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    body = await parse(request, CreateAccount)
    catalog = gw.catalog.current.catalog
    now = gw.clock()
    if (body.plan is None) == (body.contract is None):
        raise ValidationFailed(
            "plan: give exactly one of plan or contract", details={"field": "plan"}
        )
    try:  # checked and made UTC before anything is written
        anchor = check_anchor(body.anchor or now, now)
    except ValueError as exc:
        raise ValidationFailed(f"anchor: {exc}", details={"field": "anchor"}) from exc
    if body.contract is not None:
        operations.check_contract_prices(body.contract, catalog)
        record = await gw.accounts.create_enterprise(
            name=body.name,
            contract=body.contract,
            book=operations.price_book(body.contract, catalog),
            anchor=anchor,
            now=now,
        )
    else:
        assert body.plan is not None
        plan = catalog.plans.get(body.plan)
        if plan is None:
            raise ValidationFailed(
                f"plan: unknown plan {body.plan!r}",
                details={"field": "plan", "known": sorted(catalog.plans)},
            )
        record = await gw.accounts.create_public(
            name=body.name, plan_name=body.plan, plan=plan, anchor=anchor, now=now
        )
    return web.json_response(admin_account_view(record), status=201)


@routes.get("/admin/accounts/{id}")
async def get_account(request: web.Request) -> web.Response:
    return web.json_response(admin_account_view(await _account(request)))


@routes.post("/admin/accounts/{id}/orgs")
async def add_org(request: web.Request) -> web.Response:
    record = await _account(request)
    body = await parse(request, NewOrg)
    org = await operations.add_org(request.app[GATEWAY], record.id, body.name, body.concurrency)
    return web.json_response(org, status=201)


@routes.patch("/admin/orgs/{id}")
async def update_org(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    org_id = request.match_info["id"]
    account_id = await gw.accounts.account_of_org(org_id)
    if account_id is None:
        raise NotFound("No such organization", details={"org_id": org_id})
    body = await parse(request, OrgPatch)
    return web.json_response(
        await operations.update_org(gw, account_id, org_id, body.name, body.concurrency)
    )


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


@routes.post("/admin/accounts/{id}/subscription")
async def change_plan(request: web.Request) -> web.Response:
    return await _plan_change(request, preview=False)


@routes.post("/admin/accounts/{id}/subscription/preview")
async def preview(request: web.Request) -> web.Response:
    return await _plan_change(request, preview=True)


@routes.post("/admin/accounts/{id}/cancel")
@routes.post("/admin/accounts/{id}/subscription/cancel")
async def cancel(request: web.Request) -> web.Response:
    record = await _account(request)
    return web.json_response(await operations.cancel(request.app[GATEWAY], record.id))


@routes.post("/admin/accounts/{id}/reactivate")
@routes.post("/admin/accounts/{id}/subscription/reactivate")
async def reactivate(request: web.Request) -> web.Response:
    record = await _account(request)
    return web.json_response(await operations.reactivate(request.app[GATEWAY], record.id))


@routes.put("/admin/accounts/{id}/contract")
async def put_contract(request: web.Request) -> web.Response:
    record = await _account(request)
    contract = await parse(request, Contract)
    updated = await operations.sign_contract(request.app[GATEWAY], record.id, contract)
    return web.json_response(admin_account_view(updated))


@routes.post("/admin/accounts/{id}/credits")
async def adjust_credits(request: web.Request) -> web.Response:
    record = await _account(request)
    body = await parse(request, CreditAdjustment)
    if body.delta == 0:
        raise ValidationFailed("delta: must not be 0", details={"field": "delta"})
    entry = await operations.adjust_credits(
        request.app[GATEWAY], record.id, body.delta, body.reason
    )
    return web.json_response(entry, status=201)


@routes.get("/admin/accounts/{id}/usage")
async def usage(request: web.Request) -> web.Response:
    record = await _account(request)
    return web.json_response(await operations.usage(request.app[GATEWAY], record, request.query))


@routes.get("/admin/accounts/{id}/requests")
async def recent_requests(request: web.Request) -> web.Response:
    record = await _account(request)
    return web.json_response(
        await operations.recent_requests(request.app[GATEWAY], record.id, request.query)
    )


@routes.get("/admin/accounts/{id}/billing")
async def billing(request: web.Request) -> web.Response:
    record = await _account(request)
    return web.json_response(await operations.history(request.app[GATEWAY], record.id))


async def _plan_change(request: web.Request, *, preview: bool) -> web.Response:
    record = await _account(request)
    choice = await parse(request, PlanChoice)
    gw: Gateway = request.app[GATEWAY]
    return web.json_response(
        await operations.change_plan(gw, record.id, choice.plan, preview=preview)
    )


async def _account(request: web.Request) -> AccountRecord:
    """The account named in the path, renewed if its cycle ended."""
    gw = request.app[GATEWAY]
    account_id = request.match_info["id"]
    if not await gw.client.exists(keys.account(account_id)):
        raise NotFound("No such account", details={"account_id": account_id})
    return await operations.current(gw, account_id)
