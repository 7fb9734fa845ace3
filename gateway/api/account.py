"""The customer API on the public listener (SPEC section 6), authenticated by API key.

Every call counts in the account's per-second rate window, the one proxied requests use, and
every answer to a counted call carries `X-RateLimit-Limit` and `X-RateLimit-Remaining`.
Subscription changes are further capped per rolling hour
(`limits.max_subscription_changes_per_hour`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from gateway.api import operations
from gateway.api.schemas import PlanChoice, account_view, parse
from gateway.clock import iso
from gateway.context import GATEWAY, REQUEST_ID, ROUTE, TRACKING, WHO, Gateway
from gateway.errors import InsufficientPermissions, InvalidApiKey, RateLimitExceeded, StoreError
from gateway.store.accounts import AccountRecord, OrgRecord
from gateway.store.ledger import Identity

routes = web.RouteTableDef()

Change = Callable[[Gateway, AccountRecord], Awaitable[dict[str, Any]]]


@routes.get("/v1/credits")
async def credits(request: web.Request) -> web.Response:
    record, _ = await caller(request)
    canceled = record.status == "canceled"  # no credits to spend, no cycle to reset (SPEC 6)
    return answer(
        request,
        {
            "remaining": 0 if canceled else record.remaining,
            "perCycle": record.allocation,
            "cycleResetsAt": None if canceled else iso(record.cycle_end),
        },
    )


@routes.get("/v1/plans")
async def plans(request: web.Request) -> web.Response:
    """The public plans a customer can choose from (for the dashboard's plan picker)."""
    await caller(request)
    catalog = request.app[GATEWAY].catalog.current.catalog
    return answer(
        request,
        {
            "plans": [
                {"name": name, **plan.model_dump()}
                for name, plan in sorted(
                    catalog.plans.items(), key=lambda item: item[1].price_cents
                )
            ]
        },
    )


@routes.get("/v1/account")
async def account(request: web.Request) -> web.Response:
    record, org = await caller(request)
    return answer(request, account_view(record, org))


@routes.get("/v1/account/usage")
async def usage(request: web.Request) -> web.Response:
    record, _ = await caller(request)
    return answer(request, await operations.usage(request.app[GATEWAY], record, request.query))


@routes.get("/v1/account/requests")
async def recent_requests(request: web.Request) -> web.Response:
    record, _ = await caller(request)
    return answer(
        request, await operations.recent_requests(request.app[GATEWAY], record.id, request.query)
    )


@routes.get("/v1/account/billing")
async def billing(request: web.Request) -> web.Response:
    record, _ = await caller(request)
    return answer(request, await operations.history(request.app[GATEWAY], record.id))


@routes.post("/v1/account/subscription")
async def change_plan(request: web.Request) -> web.Response:
    async def change(gw: Gateway, record: AccountRecord) -> dict[str, Any]:
        choice = await parse(request, PlanChoice)
        return await operations.change_plan(gw, record.id, choice.plan, preview=False)

    return await _subscription_change(request, change)


@routes.post("/v1/account/subscription/preview")
async def preview(request: web.Request) -> web.Response:
    """What a change would do; it changes nothing, so it is not one of the hour's changes."""
    record, _ = await caller(request)
    _self_service(record)
    choice = await parse(request, PlanChoice)
    gw = request.app[GATEWAY]
    return answer(request, await operations.change_plan(gw, record.id, choice.plan, preview=True))


@routes.post("/v1/account/subscription/cancel")
async def cancel(request: web.Request) -> web.Response:
    return await _subscription_change(request, lambda gw, record: operations.cancel(gw, record.id))


@routes.post("/v1/account/subscription/reactivate")
async def reactivate(request: web.Request) -> web.Response:
    return await _subscription_change(
        request, lambda gw, record: operations.reactivate(gw, record.id)
    )


async def caller(request: web.Request) -> tuple[AccountRecord, OrgRecord]:
    """The caller's account (renewed if due) and org, once the call has counted; every
    customer route (webhooks too) starts here."""
    return await _account_of(request, await count_call(request))


async def count_call(
    request: web.Request, *, change: bool = False, route: str | None = None
) -> Identity:
    """Authenticate and count the call in the account's rate window; `change`: it changes the
    subscription, so it also takes one of the hour's changes (release it if the change fails).
    A revoked key is refused here, by the script, as admission refuses it. `route`: the label
    of metrics and logs, when the path holds an id."""
    gw = request.app[GATEWAY]
    request[ROUTE] = route or request.path
    who = await gw.keys.authenticate(request.headers.get("Authorization"))
    request[WHO] = who
    cap = gw.catalog.current.catalog.limits.max_subscription_changes_per_hour
    counted = await gw.ledger.count_call(
        who,
        request_id=request[REQUEST_ID],
        now_ms=gw.now_ms(),
        changes_per_hour=cap if change else 0,
    )
    if counted.code == "INVALID_API_KEY":
        raise InvalidApiKey()
    request[TRACKING] = {
        "X-RateLimit-Limit": str(counted.rps_limit),
        "X-RateLimit-Remaining": str(max(0, counted.rps_remaining)),
    }
    if counted.code == "RATE_LIMIT_EXCEEDED":
        raise RateLimitExceeded(details={"limit": counted.rps_limit}, headers={"Retry-After": "1"})
    if counted.code == "CHANGE_LIMIT_EXCEEDED":
        raise RateLimitExceeded(
            f"Too many subscription changes: at most {cap} an hour",
            details={"limit": cap, "window_s": 3600},
            headers={"Retry-After": str(counted.retry_after_s)},
        )
    return who


async def _account_of(request: web.Request, who: Identity) -> tuple[AccountRecord, OrgRecord]:
    record = await operations.current(request.app[GATEWAY], who.account_id)
    org = record.org(who.org_id)
    if org is None:  # the key's org is gone with the key: refused like a revoked key
        raise InvalidApiKey()
    return record, org


async def _subscription_change(request: web.Request, change: Change) -> web.Response:
    """Run a plan change, cancel or reactivation as one of the account's changes this hour;
    a change that fails (refused, invalid, store down) gives its place back."""
    gw = request.app[GATEWAY]
    who = await count_call(request, change=True)
    try:
        record, _ = await _account_of(request, who)
        _self_service(record)
        body = await change(gw, record)
    except Exception:
        with contextlib.suppress(StoreError):  # keep the change's own error for the client
            await gw.ledger.release_change(who, request[REQUEST_ID])
        raise
    return answer(request, body)


def _self_service(record: AccountRecord) -> None:
    if record.kind == "enterprise":
        raise InsufficientPermissions(
            "Enterprise subscriptions change through your contract: contact support"
        )


def answer(request: web.Request, body: dict[str, Any]) -> web.Response:
    """A JSON answer with the rate-limit headers of the call (errors get them in http.py)."""
    return web.json_response(body, headers=request[TRACKING])
