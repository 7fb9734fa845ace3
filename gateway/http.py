"""The boundary: errors become the JSON envelope here, and only here, and are counted here."""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import os
import time
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from gateway.context import (
    CHARGED,
    GATEWAY,
    OUTCOME,
    REQUEST_ID,
    ROUTE,
    STARTED,
    TRACKING,
    UPSTREAM_SECONDS,
    WHO,
)
from gateway.errors import (
    AdminDisabled,
    GatewayError,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    StoreError,
    Unauthorized,
    ValidationFailed,
)
from gateway.listener import drop_unread_body
from gateway.store.ledger import Identity

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Unique without a syscall per request: a random per-process prefix and a counter.
_ID_PREFIX = "req_" + os.urandom(8).hex()
_request_ids = (f"{_ID_PREFIX}{n:016x}" for n in itertools.count())
log = logging.getLogger(__name__)


def as_gateway_error(exc: BaseException) -> GatewayError:
    """Translate anything a handler raised into the one error tree."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, StoreError):
        return ServiceUnavailable(retry_after_s=exc.retry_after_s)
    if isinstance(exc, RedisError | RedisClusterException):
        # A store call made without the ledger's wrapper (the account views, say): the store
        # is unreachable, which is a 503 like any other, never a 500.
        return ServiceUnavailable()
    if isinstance(exc, web.HTTPException):
        if exc.status == 404:
            return NotFound()
        if exc.status == 405:
            return MethodNotAllowed()
        if exc.status == 413:
            return PayloadTooLarge()
        if 400 <= exc.status < 500:
            return ValidationFailed(exc.reason)
    # The class and the frames, not the message: a message can quote what a client sent.
    log.error(
        "unhandled error",
        extra={
            "error": type(exc).__name__,
            "stack": "".join(traceback.format_tb(exc.__traceback__)),
        },
    )
    return GatewayError()


def error_response(request: web.Request, err: GatewayError) -> web.Response:
    now = request.app[GATEWAY].clock()
    return web.json_response(err.envelope(now), status=err.status, headers=err.headers)


@web.middleware
async def public_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, latency, error envelope, the outcome count and the access line."""
    request[STARTED] = started = time.perf_counter()
    request[REQUEST_ID] = next(_request_ids)
    try:
        response = await handler(request)
        outcome = request.get(OUTCOME, "free")
    except asyncio.CancelledError:
        # The client hung up (or shutdown ran out of grace): no response to write, but the
        # request still counts, as 499 like nginx logs it.
        _record(
            request, 499, request.get(OUTCOME, "client_canceled"), started, request.get(CHARGED, 0)
        )
        raise
    except Exception as exc:
        err = as_gateway_error(exc)
        response = error_response(request, err)
        response.headers.update(request.get(TRACKING, {}))
        outcome = err.outcome
        if request.body_exists and not request.content.is_eof():
            # Refused before its body was read (a bad key, say): end the connection rather
            # than read the rest of a body nobody wants.
            response.force_close()
            drop_unread_body(request)
    # What the gateway charged, from the request's own record: never an upstream's header.
    status = 499 if outcome == "client_canceled" else response.status
    seconds = _record(request, status, outcome, started, request.get(CHARGED, 0))
    if not response.prepared:  # a streamed reply sent its own (gateway/proxy/relay.py)
        response.headers["X-Request-Id"] = request[REQUEST_ID]
        response.headers["X-Latency-Ms"] = str(int(seconds * 1000))
    return response


def _record(request: web.Request, status: int, outcome: str, started: float, credits: int) -> float:
    """Count the request and write its access line; returns its latency in seconds."""
    seconds = time.perf_counter() - started
    route = request.get(ROUTE, "unmatched")
    gw = request.app[GATEWAY]
    who: Identity | None = request.get(WHO)
    gw.metrics.count_request(route, status, outcome, seconds)
    if who is not None and gw.catalog.current.catalog.metrics.per_org:
        gw.metrics.org_requests.labels(who.org_id, outcome).inc()
        if credits:
            gw.metrics.org_credits_charged.labels(who.org_id).inc(credits)
    if gw.access_log.enabled:
        gw.access_log.write(
            request_id=request[REQUEST_ID],
            method=request.method,
            route=route,
            status=status,
            outcome=outcome,
            credits=credits,
            account=who.account_id if who else None,
            org=who.org_id if who else None,
            seconds=seconds,
            upstream_seconds=request.get(UPSTREAM_SECONDS),
        )
    return seconds


@web.middleware
async def admin_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bearer admin token on /admin/*, and the same envelope for every error."""
    try:
        if request.path.startswith("/admin/") or request.path == "/admin":
            _check_admin_token(request)
        return await handler(request)
    except Exception as exc:
        return error_response(request, as_gateway_error(exc))


def _check_admin_token(request: web.Request) -> None:
    token = request.app[GATEWAY].settings.admin_token
    if token is None or not token.get_secret_value():
        raise AdminDisabled()
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    expected = token.get_secret_value().encode()
    # Constant time, so the token cannot be guessed byte by byte from response times.
    # A header of bytes that are not UTF-8 arrives with surrogates: compared as it came.
    offered = given.strip().encode("utf-8", "surrogateescape")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
        raise Unauthorized()
