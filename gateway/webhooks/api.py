"""The customer's webhook settings (SPEC 11, signing): per org, Bearer API key, counted in the
account's rate window like every customer call."""

from __future__ import annotations

from aiohttp import web

from gateway.api.account import answer, caller
from gateway.context import GATEWAY, TRACKING
from gateway.webhooks import signing

routes = web.RouteTableDef()


@routes.post("/v1/webhooks/secret")
async def rotate_secret(request: web.Request) -> web.Response:
    """A new signing secret (201), shown this once; an old one stops signing at once."""
    record, org = await caller(request)
    gw = request.app[GATEWAY]
    secret = await gw.ledger.call(
        "webhooks", signing.rotate(gw.client, record.id, org.id, gw.now_ms())
    )
    response = answer(request, {"secret": secret})
    response.set_status(201)
    response.headers["Cache-Control"] = "no-store"
    return response


@routes.delete("/v1/webhooks/secret")
async def delete_secret(request: web.Request) -> web.Response:
    """Deliveries go unsigned from now on (204, also when there was no secret)."""
    record, org = await caller(request)
    gw = request.app[GATEWAY]
    await gw.ledger.call("webhooks", signing.delete(gw.client, record.id, org.id))
    return web.Response(status=204, headers=request[TRACKING])


@routes.get("/v1/webhooks")
async def settings(request: web.Request) -> web.Response:
    record, org = await caller(request)
    gw = request.app[GATEWAY]
    return answer(
        request, await gw.ledger.call("webhooks", signing.status(gw.client, record.id, org.id))
    )
