"""The customer API on the public listener (SPEC section 6), authenticated by API key."""

from __future__ import annotations

from aiohttp import web

from gateway.api.schemas import account_view
from gateway.clock import iso
from gateway.context import GATEWAY, ROUTE, WHO
from gateway.errors import InvalidApiKey
from gateway.store.accounts import AccountRecord, OrgRecord

routes = web.RouteTableDef()


@routes.get("/v1/credits")
async def credits(request: web.Request) -> web.Response:
    record, _ = await _caller(request)
    return web.json_response(
        {
            "remaining": record.remaining,
            "perCycle": record.allocation,
            "cycleResetsAt": iso(record.cycle_end),
        }
    )


@routes.get("/v1/account")
async def account(request: web.Request) -> web.Response:
    record, org = await _caller(request)
    return web.json_response(account_view(record, org))


async def _caller(request: web.Request) -> tuple[AccountRecord, OrgRecord]:
    """The caller's account and org; a revoked key is refused here as on the hot path."""
    gw = request.app[GATEWAY]
    request[ROUTE] = request.path
    who = await gw.keys.authenticate(request.headers.get("Authorization"))
    request[WHO] = who
    record = await gw.accounts.get(who.account_id, gw.now_ms())
    org = next((o for o in record.orgs if o.id == who.org_id), None) if record else None
    key = next((k for k in org.keys if k.id == who.key_id), None) if org else None
    if record is None or org is None or key is None or key.revoked:
        raise InvalidApiKey()
    return record, org
