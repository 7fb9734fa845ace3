"""Sync requests that wait for a concurrency slot instead of an immediate 429 (SPEC 10).

A request that finds its org full joins the org's line in the store (dispatch.lua, which may
admit it at once); whoever frees a slot admits the line's head on its behalf and wakes its
process. The waiter leaves the line when its deadline passes or its client hangs up; if its
turn came meanwhile, leave.lua hands the admission back, so a slot is never lost."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aiohttp import web

from gateway.catalog.models import Catalog
from gateway.context import GATEWAY, REQUEST_ID, WAITED, Gateway
from gateway.errors import ClientClosedRequest
from gateway.proxy import inbound
from gateway.store import keys
from gateway.store.ledger import Admission, Idempotency, Identity

# How often a waiter looks at its connection: a client that hangs up leaves the line this soon.
_HANG_UP_CHECK_S = 0.05


def preferred_wait(request: web.Request) -> int | None:
    """The `wait` preference of RFC 7240 (`Prefer: wait=N`, N whole seconds), if any."""
    for header in request.headers.getall("Prefer", []):
        for preference in header.split(","):
            token = preference.split(";", 1)[0].strip()
            name, _, value = token.partition("=")
            value = value.strip().strip('"')
            if name.strip().lower() == "wait" and value.isdigit() and value.isascii():
                return int(value)
    return None


async def granted_wait(gw: Gateway, request: web.Request, who: Identity, catalog: Catalog) -> int:
    """Seconds this request may wait: its Prefer, else its plan's queue_wait_s, capped."""
    cap = catalog.limits.max_queue_wait_s
    asked = preferred_wait(request)
    if asked is None:
        if not any(plan.queue_wait_s for plan in catalog.plans.values()):
            return 0  # no plan waits: no need to look the account's plan up
        plan_name = await gw.ledger.call(
            "lookup", gw.client.hget(keys.account(who.account_id), "plan")
        )
        plan = catalog.plans.get(plan_name or "")
        asked = plan.queue_wait_s if plan is not None else 0
    return min(asked, cap)


async def wait_if_asked(
    request: web.Request,
    who: Identity,
    refused: Admission,
    price: int | None,
    pricing_version: str,
    idempotency: Idempotency | None,
) -> Admission:
    """A request its org's concurrency refused: wait for a slot if its `Prefer: wait` or its
    plan asks for it (request[WAITED] then holds the seconds granted), else `refused`."""
    gw = request.app[GATEWAY]
    wait_s = (
        0 if price is None else await granted_wait(gw, request, who, gw.catalog.current.catalog)
    )
    if wait_s <= 0:
        return refused
    request[WAITED] = wait_s
    return await wait_for_slot(
        request,
        who,
        price=price or 0,
        pricing_version=pricing_version,
        idempotency=idempotency,
        wait_s=wait_s,
        refused=refused,
    )


async def wait_for_slot(
    request: web.Request,
    who: Identity,
    *,
    price: int,
    pricing_version: str,
    idempotency: Idempotency | None,
    wait_s: int,
    refused: Admission,
) -> Admission:
    """Wait up to `wait_s` for a slot; the admission that decided it, or `refused` (a 429)
    when none came in time or the line was full. A client that hangs up ends the wait."""
    gw = request.app[GATEWAY]
    dispatcher = gw.dispatcher
    request_id = request[REQUEST_ID]
    began = time.perf_counter()
    deadline_ms = gw.now_ms() + wait_s * 1000
    record = "|".join(
        [
            "W",
            dispatcher.channel,
            who.key_id,
            str(price),
            pricing_version,
            idempotency.key_hash if idempotency else "",
            idempotency.request_hash if idempotency else "",
            str(idempotency.in_flight_ttl_s) if idempotency else "",
            str(deadline_ms),
        ]
    )
    decision = dispatcher.expect(request_id)
    try:
        joined = await dispatcher.dispatch(
            who.account_id, who.org_id, began, join=(request_id, record)
        )
        if joined.code == "FULL":
            return refused
        try:
            admission = await _until_decided(request, decision, began + wait_s)
        except asyncio.CancelledError:
            # A drain out of grace: leave the line; the handler releases a slot taken for us.
            await asyncio.shield(dispatcher.store.leave(who, request_id))
            raise
        if admission is None:
            state, decided = await dispatcher.store.leave(who, request_id)
            admission = decided if state == "DECIDED" else None
        else:
            dispatcher.spawn(_forget_quietly(gw, who.account_id, request_id))
    finally:
        dispatcher.forget(request_id)
        gw.metrics.queue_wait.observe(time.perf_counter() - began)
    if admission is None:
        if inbound.client_gone(request):
            raise ClientClosedRequest()
        return refused
    return _parse(admission)


async def _until_decided(
    request: web.Request, decision: asyncio.Future[str], deadline: float
) -> str | None:
    while not decision.done():
        left = deadline - time.perf_counter()
        if left <= 0 or inbound.client_gone(request):
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(decision), min(left, _HANG_UP_CHECK_S))
    return decision.result()


async def _forget_quietly(gw: Gateway, account_id: str, request_id: str) -> None:
    with contextlib.suppress(Exception):
        await gw.dispatcher.store.forget_decision(account_id, request_id)


def _parse(admission: str) -> Admission:
    code, rps, rps_left, limit, current, remaining, cycle = admission.split("|")
    return Admission(
        code, int(rps), int(rps_left), int(limit), int(current), int(remaining), 0, int(cycle)
    )
