"""The customer API on the public listener (SPEC section 6), authenticated by API key."""

from __future__ import annotations

from aiohttp import web

from gateway.api import operations
from gateway.api.schemas import PlanChoice, account_view, parse
from gateway.clock import iso
from gateway.context import GATEWAY, ROUTE, WHO
from gateway.errors import InsufficientPermissions, InvalidApiKey
from gateway.store.accounts import AccountRecord, OrgRecord

routes = web.RouteTableDef()


@routes.get("/v1/credits")
async def credits(request: web.Request) -> web.Response:
    record, _ = await _caller(request)
    canceled = record.status == "canceled"  # no credits to spend, no cycle to reset (SPEC 6)
    return web.json_response(
        {
            "remaining": 0 if canceled else record.remaining,
            "perCycle": record.allocation,
            "cycleResetsAt": None if canceled else iso(record.cycle_end),
        }
    )


@routes.get("/v1/plans")
async def plans(request: web.Request) -> web.Response:
    """The public plans a customer can choose from (for the dashboard's plan picker)."""
    await _caller(request)
    catalog = request.app[GATEWAY].catalog.current.catalog
    return web.json_response(
        {
            "plans": [
                {"name": name, **plan.model_dump()}
                for name, plan in sorted(
                    catalog.plans.items(), key=lambda item: item[1].price_cents
                )
            ]
        }
    )


@routes.get("/v1/account")
async def account(request: web.Request) -> web.Response:
    record, org = await _caller(request)
    return web.json_response(account_view(record, org))


@routes.get("/v1/account/usage")
async def usage(request: web.Request) -> web.Response:
    record, _ = await _caller(request)
    return web.json_response(await operations.usage(request.app[GATEWAY], record, request.query))


@routes.get("/v1/account/requests")
async def recent_requests(request: web.Request) -> web.Response:
    record, _ = await _caller(request)
    return web.json_response(
        await operations.recent_requests(request.app[GATEWAY], record.id, request.query)
    )


@routes.get("/v1/account/billing")
async def billing(request: web.Request) -> web.Response:
    record, _ = await _caller(request)
    return web.json_response(await operations.history(request.app[GATEWAY], record.id))


@routes.post("/v1/account/subscription")
async def change_plan(request: web.Request) -> web.Response:
    return await _plan_change(request, preview=False)


@routes.post("/v1/account/subscription/preview")
async def preview(request: web.Request) -> web.Response:
    return await _plan_change(request, preview=True)


async def _plan_change(request: web.Request, *, preview: bool) -> web.Response:
    record = await _self_service(request)
    choice = await parse(request, PlanChoice)
    return web.json_response(
        await operations.change_plan(request.app[GATEWAY], record.id, choice.plan, preview=preview)
    )


@routes.post("/v1/account/subscription/cancel")
async def cancel(request: web.Request) -> web.Response:
    record = await _self_service(request)
    return web.json_response(await operations.cancel(request.app[GATEWAY], record.id))


@routes.post("/v1/account/subscription/reactivate")
async def reactivate(request: web.Request) -> web.Response:
    record = await _self_service(request)
    return web.json_response(await operations.reactivate(request.app[GATEWAY], record.id))


async def _caller(request: web.Request) -> tuple[AccountRecord, OrgRecord]:
    """The caller's account (renewed if due) and org; a revoked key is refused here too."""
    gw = request.app[GATEWAY]
    request[ROUTE] = request.path
    who = await gw.keys.authenticate(request.headers.get("Authorization"))
    request[WHO] = who
    record = await operations.current(gw, who.account_id)
    org = record.org(who.org_id)
    key = next((k for k in org.keys if k.id == who.key_id), None) if org else None
    if org is None or key is None or key.revoked:
        raise InvalidApiKey()
    return record, org


async def _self_service(request: web.Request) -> AccountRecord:
    record, _ = await _caller(request)
    if record.kind == "enterprise":
        raise InsufficientPermissions(
            "Enterprise subscriptions change through your contract: contact support"
        )
    return record
