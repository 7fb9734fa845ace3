"""The async task API (SPEC 10) on the public listener, authenticated by API key.

Input is checked first (key, then body, then each item), then the call counts in the
account's rate window (a batch counts once), then the account is looked at."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway.api.account import answer, count_call
from gateway.catalog.models import AsyncOptions
from gateway.context import GATEWAY, ROUTE, WHO, Gateway
from gateway.errors import (
    Conflict,
    GatewayError,
    IdempotencyConflict,
    InsufficientCredits,
    InsufficientPermissions,
    NotFound,
    SubscriptionInactive,
    ValidationFailed,
)
from gateway.pricing import parse_json
from gateway.proxy import inbound
from gateway.queue import tasks
from gateway.queue.tasks import NewTask
from gateway.store.ledger import Identity
from gateway.webhooks.targets import verify_target

routes = web.RouteTableDef()

# A batch body may hold up to max_batch payloads, each up to max_request_body_bytes; this
# caps what one call makes the gateway read.
MAX_BATCH_BODY_BYTES = 32 * 1024 * 1024
MAX_LIST = 1000


@routes.post("/v1/async/task")
async def create(request: web.Request) -> web.Response:
    gw, _, who = await _authenticated(request, "/v1/async/task")
    limits = gw.catalog.current.catalog.limits
    document = parse_json(await _body(request, limits.max_request_body_bytes))
    item = await _parse(gw, who, document, {})
    await count_call(request, route="/v1/async/task")
    result = (await _create(gw, who, [item]))[0]
    if isinstance(result, GatewayError):
        raise result
    return answer(request, {"success": True, **result})


@routes.post("/v1/async/task/batch")
async def create_batch(request: web.Request) -> web.Response:
    gw, options, who = await _authenticated(request, "/v1/async/task/batch")
    limits = gw.catalog.current.catalog.limits
    cap = min(MAX_BATCH_BODY_BYTES, limits.max_request_body_bytes * options.max_batch)
    document = parse_json(await _body(request, cap))
    if not isinstance(document, list) or not document:
        raise ValidationFailed(
            "The body must be a non-empty JSON array of tasks", details={"field": "body"}
        )
    if len(document) > options.max_batch:
        raise ValidationFailed(
            f"A batch holds at most {options.max_batch} tasks",
            details={"field": "body", "max": options.max_batch},
        )
    parsed: list[NewTask | GatewayError] = []
    resolved: dict[str, ValidationFailed | None] = {}
    for item in document:
        try:
            parsed.append(await _parse(gw, who, item, resolved))
        except ValidationFailed as exc:
            parsed.append(exc)
    await count_call(request, route="/v1/async/task/batch")
    valid = [item for item in parsed if isinstance(item, NewTask)]
    created = iter(await _create(gw, who, valid) if valid else [])
    results = [
        _error(item) if isinstance(item, GatewayError) else _result(next(created))
        for item in parsed
    ]
    return answer(request, {"success": True, "results": results})


@routes.get("/v1/async/task/{id}")
async def get(request: web.Request) -> web.Response:
    gw, _, who = await _authenticated(request, "/v1/async/task/{id}")
    await count_call(request, route="/v1/async/task/{id}")
    fields = await _own_task(gw, who, request.match_info["id"])
    return answer(request, tasks.view(request.match_info["id"], fields))


@routes.delete("/v1/async/task/{id}")
async def cancel(request: web.Request) -> web.Response:
    gw, _, who = await _authenticated(request, "/v1/async/task/{id}")
    await count_call(request, route="/v1/async/task/{id}")
    task_id = request.match_info["id"]
    code, task_type, webhook_due = await gw.dispatcher.store.cancel(who, task_id, gw.now_ms())
    if code == "NOT_FOUND":
        raise NotFound("No such task")
    if code == "CONFLICT":
        raise Conflict("Only a QUEUED task can be canceled", details={"task_id": task_id})
    gw.metrics.async_tasks.labels(task_type, "canceled").inc()
    if webhook_due:
        await gw.dispatcher.webhook_due(who.account_id)
    return answer(request, tasks.view(task_id, await _own_task(gw, who, task_id)))


@routes.get("/v1/async/tasks")
async def listing(request: web.Request) -> web.Response:
    gw, _, who = await _authenticated(request, "/v1/async/tasks")
    status = request.query.get("status") or None
    if status is not None and status not in tasks.STATUSES:
        raise ValidationFailed(
            f"status must be one of {', '.join(tasks.STATUSES)}", details={"field": "status"}
        )
    raw = request.query.get("limit", "50")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST:
        raise ValidationFailed(
            f"limit must be an integer from 1 to {MAX_LIST}", details={"field": "limit"}
        )
    await count_call(request, route="/v1/async/tasks")
    found = await gw.dispatcher.store.listing(who, status, int(raw))
    # Each TASK with its credits too (the dashboard's list shows them).
    listed = [
        {**tasks.summary(task_id, fields), "credits": tasks.view(task_id, fields)["credits"]}
        for task_id, fields in found
    ]
    return answer(request, {"tasks": listed})


@routes.get("/v1/async/status")
async def status(request: web.Request) -> web.Response:
    gw, _, who = await _authenticated(request, "/v1/async/status")
    await count_call(request, route="/v1/async/status")
    return answer(request, await gw.dispatcher.store.status(who, gw.now_ms()))


async def _authenticated(
    request: web.Request, route: str
) -> tuple[Gateway, AsyncOptions, Identity]:
    gw = request.app[GATEWAY]
    request[ROUTE] = route
    options = gw.catalog.current.catalog.async_
    if options is None:
        raise NotFound("The async API is not enabled")
    who = await gw.keys.authenticate(request.headers.get("Authorization"))
    request[WHO] = who
    return gw, options, who


async def _body(request: web.Request, limit: int) -> bytes:
    limits = request.app[GATEWAY].catalog.current.catalog.limits
    inbound.check_declared_length(request, limit)
    return await inbound.read_body(request, limit, limits.client_body_timeout_s)


async def _parse(
    gw: Gateway, who: Identity, item: Any, resolved: dict[str, ValidationFailed | None]
) -> NewTask:
    """One item as a task; its webhook host resolved (once per request and host) and refused
    if it points at a private address (SPEC 11)."""
    catalog = gw.catalog.current.catalog
    _, book = await gw.pricebooks.get(who.account_id)
    task = tasks.parse_item(item, catalog, book, gw.clock(), catalog.limits.max_request_body_bytes)
    url = task.webhook_url
    if url and catalog.async_ is not None and not catalog.async_.webhooks.allow_private_targets:
        if url not in resolved:
            try:
                await verify_target(url, allow_private=False)
                resolved[url] = None
            except ValidationFailed as exc:
                resolved[url] = exc
        refused = resolved[url]
        if refused is not None:
            raise refused
    return task


async def _create(
    gw: Gateway, who: Identity, items: list[NewTask]
) -> list[dict[str, Any] | GatewayError]:
    """Queue the items (one script), then dispatch the org in the background."""
    since = time.perf_counter()
    created_ms = gw.now_ms()  # what the script stores as createdAt
    codes = await gw.dispatcher.store.enqueue(who, created_ms, items)
    if codes == ["RENEW"]:
        await gw.billing.current(who.account_id, gw.catalog.current.catalog.plans, gw.clock())
        created_ms = gw.now_ms()
        codes = await gw.dispatcher.store.enqueue(who, created_ms, items)
    results: list[dict[str, Any] | GatewayError] = []
    for item, code in zip(items, codes, strict=True):
        if code == "OK":
            gw.metrics.async_tasks.labels(item.task_type, "created").inc()
            results.append(_created(item, created_ms))
        else:
            results.append(_refusal(code, item))
    if any(code == "OK" for code in codes):
        await gw.dispatcher.track(who.account_id)
        gw.dispatcher.kick(who.account_id, who.org_id, since)
    return results


def _created(item: NewTask, created_ms: int) -> dict[str, Any]:
    fields = {
        "type": item.task_type,
        "status": tasks.QUEUED,
        "priority": str(item.priority),
        "created_at": str(created_ms),
        "price": str(item.price),
    }
    if item.idempotency_key is not None:
        fields["idem_key"] = item.idempotency_key
    return {
        "task": tasks.summary(item.id, fields),
        "credits": {"creditsToCharge": item.price, "creditsCharged": None},
    }


def _refusal(code: str, item: NewTask) -> GatewayError:
    name, _, detail = code.partition(":")
    if name == "SUBSCRIPTION_INACTIVE":
        return SubscriptionInactive()
    if name == "INSUFFICIENT_PERMISSIONS":
        return InsufficientPermissions("This task type's route is open to enterprise accounts only")
    if name == "INSUFFICIENT_CREDITS":
        return InsufficientCredits(details={"required": item.price, "remaining": int(detail or 0)})
    return IdempotencyConflict(
        "A task with this idempotencyKey exists",
        details={"field": "idempotencyKey", "task_id": detail},
    )


def _result(result: dict[str, Any] | GatewayError) -> dict[str, Any]:
    return _error(result) if isinstance(result, GatewayError) else result


def _error(err: GatewayError) -> dict[str, Any]:
    return {"error": {"code": err.code, "message": err.message, "details": err.details}}


async def _own_task(gw: Gateway, who: Identity, task_id: str) -> dict[str, str]:
    """The task's fields if the caller's org owns it; another org's task is not found."""
    fields = await gw.dispatcher.store.get(who.account_id, task_id) if task_id.isascii() else {}
    if not fields or fields.get("org_id") != who.org_id or "status" not in fields:
        raise NotFound("No such task")
    return fields


