"""The hot path, top to bottom: route, authenticate, price, admit, forward, settle, headers."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import math
import time

from aiohttp import web
from multidict import CIMultiDict

from gateway.catalog.models import Route
from gateway.context import (
    CHARGED,
    GATEWAY,
    OUTCOME,
    REQUEST_ID,
    ROUTE,
    TRACKING,
    UPSTREAM_SECONDS,
    WAITED,
    WHO,
    Gateway,
)
from gateway.errors import (
    ClientClosedRequest,
    ConcurrentLimitExceeded,
    GatewayError,
    IdempotencyConflict,
    InsufficientCredits,
    InsufficientPermissions,
    InvalidApiKey,
    PayloadTooLarge,
    RateLimitExceeded,
    RequestTimeout,
    StoreError,
    SubscriptionInactive,
    ValidationFailed,
)
from gateway.pricing import price_of, route_price
from gateway.proxy import inbound
from gateway.proxy.relay import Relayed, finish, relay
from gateway.proxy.upstream import UpstreamReply, forward, request_headers
from gateway.queue.waiting import wait_if_asked
from gateway.store.ledger import Admission, Idempotency, Identity, Settlement, SettleOrder

log = logging.getLogger(__name__)
# Kept in place of a response too large to replay: a retry gets 409 (SPEC 4).
_TOO_BIG_TO_KEEP = '{"too_big": true}'


async def proxy(request: web.Request) -> web.StreamResponse:
    """Serve one proxied request of the public listener."""
    gw = request.app[GATEWAY]
    snapshot = gw.catalog.current  # read once: a reload mid-request does not affect it
    path, path_qs = inbound.target(request)
    route = snapshot.match(path, request.method)
    request[ROUTE] = route.name
    limits = snapshot.catalog.limits
    inbound.check_declared_length(request, limits.max_request_body_bytes)

    # The key before the body: a client without one holds no memory and no time.
    who = await gw.keys.authenticate(request.headers.get("Authorization"))
    request[WHO] = who
    request_id = request[REQUEST_ID]
    upstream = snapshot.catalog.upstreams[route.upstream]
    try:
        body = await inbound.read_body(
            request, limits.max_request_body_bytes, limits.client_body_timeout_s
        )
        idempotency = _idempotency(request, body, upstream.timeout_s + limits.lease_ttl_s)
        priced = inbound.decoded(request, body, limits.max_request_body_bytes)
        admission, price = await _price_and_admit(
            gw, request, route, priced, who, limits.lease_ttl_s, idempotency
        )
    except (ValidationFailed, PayloadTooLarge, RequestTimeout):
        await _count_refused(gw, request, who)
        raise
    if admission.reclaimed:
        gw.metrics.leases_reclaimed.inc(admission.reclaimed)
    if admission.code == "REPLAY" and idempotency is not None:
        return await _replay(gw, request, who, idempotency)
    tracking = _tracking_headers(admission, metered=price is not None)
    if WAITED in request:
        tracking["Preference-Applied"] = f"wait={request[WAITED]}"
    request[TRACKING] = tracking
    if not admission.admitted:
        raise _refusal(admission, price)

    if inbound.client_gone(request):  # hung up before anything went upstream
        if price is not None:
            await _release(gw, request, who, 499, time.perf_counter(), idempotency)
        raise ClientClosedRequest()
    outgoing = request_headers(
        request.headers, request_id=request_id, who=who, client_ip=request.remote
    )
    send = forward(
        gw.http,
        upstream,
        method=request.method,
        path_qs=path_qs,
        headers=outgoing,
        body=body,
    )
    if price is None:  # unmetered: relayed, nothing to settle
        free = await send
        request[OUTCOME] = "free" if _success(free.status) else "upstream_error"
        headers = _client_headers(free, tracking)
        relayed = await relay(
            request,
            free,
            headers,
            limit=limits.max_response_bytes,
            keep_limit=0,
            send_timeout_s=limits.client_body_timeout_s,
        )
        request[UPSTREAM_SECONDS] = time.perf_counter() - free.started
        if relayed.gone:
            request[OUTCOME] = "client_canceled"
        return await finish(request, free, headers, relayed)

    started = time.perf_counter()
    with gw.inflight.holding(who, request_id):
        reply: UpstreamReply | None = None
        try:
            reply = await send
            ok = _success(reply.status)
            # The credit pair as settlement will leave it, sent ahead with a streamed head.
            tracking["X-Credits-Charged"] = str(price if ok else 0)
            tracking["X-Credits-Remaining"] = str(
                admission.credits_remaining + (0 if ok else price)
            )
            headers = _client_headers(reply, tracking)
            relayed = await relay(
                request,
                reply,
                headers,
                limit=limits.max_response_bytes,
                keep_limit=limits.max_kept_response_bytes if idempotency is not None else 0,
                send_timeout_s=limits.client_body_timeout_s,
            )
        except GatewayError as exc:  # no answer from the upstream (relay keeps its own)
            await _release(gw, request, who, exc.status, started, idempotency)
            raise
        except asyncio.CancelledError:
            # A drain that ran out of grace: released, never charged.
            if reply is not None:
                reply.body.abort()
            await _release(gw, request, who, 499, started, idempotency)
            request[OUTCOME] = "client_canceled"
            raise
        # SPEC 4: the slot was held until the upstream was done; a client that hung up is
        # charged only for a complete 2xx, and only if the catalog says so.
        gone = relayed.gone or inbound.client_gone(request)
        charge = ok and relayed.complete and (not gone or limits.charge_on_client_cancel)
        status = 499 if gone else reply.status if relayed.error is None else relayed.error.status
        settled = await _settle(
            gw,
            request,
            who,
            charge=charge,
            status=status,
            started=started,
            price=price,
            cycle=admission.cycle_start_ms,
            remaining=admission.credits_remaining,
            idempotency=idempotency,
            keep=_keepable(reply, relayed, tracking, price) if idempotency is not None else "-",
        )
    request[UPSTREAM_SECONDS] = seconds = time.perf_counter() - reply.started
    gw.metrics.per_route(route.name).upstream_duration.observe(seconds)
    request[CHARGED] = settled.charged
    if settled.charged:
        gw.metrics.per_route(route.name).credits_charged.inc(settled.charged)
    if gone:
        request[OUTCOME] = "client_canceled"
    elif not relayed.complete:
        request[OUTCOME] = "upstream_error"
    else:
        request[OUTCOME] = "charged" if settled.charged else "free" if ok else "upstream_error"
    if relayed.response is None and relayed.complete:
        # Not sent yet: the credit pair is settlement's own.
        headers["X-Credits-Charged"] = str(settled.charged)
        headers["X-Credits-Remaining"] = str(settled.credits_remaining)
    return await finish(request, reply, headers, relayed)


async def _price_and_admit(
    gw: Gateway,
    request: web.Request,
    route: Route,
    body: bytes,
    who: Identity,
    lease_ttl_s: int,
    idempotency: Idempotency | None,
) -> tuple[Admission, int | None]:
    """Price with the account's price book, then admit. The script may ask to renew the
    account first (its cycle ended) or to price again (its contract changed): then retry.
    If admission is abandoned after its script may have been sent, release what it took."""
    try:
        for _ in range(3):
            version, book = await gw.pricebooks.get(who.account_id)
            price_rule = route_price(route, book, gw.clock())
            price = None if price_rule is None else price_of(price_rule, body)
            admission = await gw.ledger.admit(
                who,
                request_id=request[REQUEST_ID],
                now_ms=gw.now_ms(),
                lease_ttl_ms=lease_ttl_s * 1000,
                price=price,
                enterprise_only=route.enterprise_only,
                pricing_version=version,
                idempotency=idempotency,
            )
            if admission.code == "RENEW":
                plans = gw.catalog.current.catalog.plans
                await gw.billing.current(who.account_id, plans, gw.clock())
            elif admission.code == "REPRICE":
                gw.pricebooks.forget(who.account_id)
            elif admission.code == "CONCURRENT_LIMIT_EXCEEDED" and WAITED not in request:
                # SPEC 10: wait for a slot instead of an immediate 429, when asked to.
                admission = await wait_if_asked(
                    request, who, admission, price, version, idempotency
                )
                if admission.code != "REPRICE":
                    return admission, price
                gw.pricebooks.forget(who.account_id)
            else:
                return admission, price
    except asyncio.CancelledError:
        # The client hung up while its admit script was on its way: the script still runs, so
        # release what it may take. Settle is idempotent, and it goes out after the admit on
        # the same pipelined connection, so it finds the lease if there is one.
        await _release(gw, request, who, 499, time.perf_counter(), idempotency)
        raise
    except StoreError as exc:
        if exc.maybe_applied:
            # A hung store may still run the admit once it wakes: the spool releases what it
            # took as soon as the store answers again, instead of after the lease TTL.
            release = _order(
                gw,
                request,
                charge=False,
                status=503,
                started=time.perf_counter(),
                idempotency=idempotency,
            )
            gw.spool.add(who, release)
        raise
    raise StoreError(
        f"account {who.account_id} did not settle into a state to admit", maybe_applied=False
    )


async def _release(
    gw: Gateway,
    request: web.Request,
    who: Identity,
    status: int,
    started: float,
    idempotency: Idempotency | None,
) -> None:
    """Settle a request that is charged nothing: its lease and hold go back."""
    await _settle(
        gw, request, who, charge=False, status=status, started=started, idempotency=idempotency
    )


async def _settle(
    gw: Gateway,
    request: web.Request,
    who: Identity,
    *,
    charge: bool,
    status: int,
    started: float,
    price: int = 0,
    cycle: int = 0,
    remaining: int = 0,
    idempotency: Idempotency | None = None,
    keep: str = "-",
) -> Settlement:
    """Settle once; if the store cannot be reached, spool the settlement to disk for replay.
    `remaining` is the balance after this request's hold, as admission reported it; `keep` is
    the response a retry with the same Idempotency-Key gets ("-": none, the key frees)."""
    order = _order(
        gw,
        request,
        charge=charge,
        status=status,
        started=started,
        price=price,
        cycle=cycle,
        idempotency=idempotency,
        keep=keep,
    )
    try:
        settled = await gw.ledger.settle(who, order)
    except StoreError:
        gw.spool.add(who, order)
        # The charge will land on replay; tell the customer what it will be.
        return Settlement(
            applied=False,
            charged=price if charge else 0,
            credits_remaining=remaining if charge else remaining + price,
        )
    if settled.queued:  # the slot just freed is wanted: give it away now (SPEC 10)
        gw.dispatcher.kick(who.account_id, who.org_id)
    return settled


def _order(
    gw: Gateway,
    request: web.Request,
    *,
    charge: bool,
    status: int,
    started: float,
    price: int = 0,
    cycle: int = 0,
    idempotency: Idempotency | None = None,
    keep: str = "-",
) -> SettleOrder:
    return {
        "request_id": request[REQUEST_ID],
        "now_ms": gw.now_ms(),
        "charge": charge,
        "price": price,
        "cycle": cycle,
        "route": request[ROUTE],
        "status": status,
        "latency_ms": int((time.perf_counter() - started) * 1000),
        "idempotency_key": idempotency.key_hash if idempotency else "",
        "response": keep if charge else "-",
    }


async def _count_refused(gw: Gateway, request: web.Request, who: Identity) -> None:
    """An authenticated request refused for its input before admission still counts in the
    account's rate window, and its answer carries the window's headers (SPEC 4)."""
    try:
        counted = await gw.ledger.count_call(
            who, request_id=request[REQUEST_ID], now_ms=gw.now_ms()
        )
    except StoreError:
        return  # the input error is the answer; the window's headers are best effort here
    request[TRACKING] = {
        "X-RateLimit-Limit": str(counted.rps_limit),
        "X-RateLimit-Remaining": str(max(0, counted.rps_remaining)),
    }


def _idempotency(request: web.Request, body: bytes, longest_s: float) -> Idempotency | None:
    """The request's Idempotency-Key, hashed, with a hash of what the request asks."""
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    if not 0 < len(key) <= 255 or not key.isascii() or not key.isprintable():
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            details={"field": "Idempotency-Key"},
        )
    asked = hashlib.sha256(f"{request.method} {request.path_qs}\n".encode() + body).hexdigest()
    return Idempotency(hashlib.sha256(key.encode()).hexdigest(), asked, math.ceil(longest_s))


def _keepable(reply: UpstreamReply, relayed: Relayed, tracking: dict[str, str], price: int) -> str:
    """The response as a retry will get it (status, headers and body in base64), with the
    tracking headers of this request as charged; too big to keep, a marker that says so."""
    if relayed.kept is None:
        return _TOO_BIG_TO_KEEP
    kept = [[name, value] for name, value in reply.headers.items()]
    kept += [[name, value] for name, value in tracking.items()]
    body = b"".join(relayed.kept)
    return json.dumps(
        {"status": reply.status, "headers": kept, "body": base64.b64encode(body).decode()}
    )


async def _replay(
    gw: Gateway, request: web.Request, who: Identity, idempotency: Idempotency
) -> web.Response:
    """Serve the kept response of an earlier success: no upstream call, no charge."""
    raw = await gw.ledger.stored_response(who, idempotency.key_hash)
    if raw is None:  # expired between admit and now
        raise IdempotencyConflict("The earlier request with this Idempotency-Key expired; retry")
    if raw == _TOO_BIG_TO_KEEP:
        raise IdempotencyConflict(
            "The earlier response with this Idempotency-Key was too large to keep for replay",
            details={"field": "Idempotency-Key"},
        )
    kept = json.loads(raw)
    headers: CIMultiDict[str] = CIMultiDict((name, value) for name, value in kept["headers"])
    headers["Idempotent-Replayed"] = "true"
    request[OUTCOME] = "free"
    request[CHARGED] = 0
    return web.Response(status=kept["status"], body=base64.b64decode(kept["body"]), headers=headers)


def _success(status: int) -> bool:
    return 200 <= status < 300


def _client_headers(reply: UpstreamReply, tracking: dict[str, str]) -> CIMultiDict[str]:
    headers = reply.headers
    headers.update(tracking)
    return headers


def _tracking_headers(admission: Admission, *, metered: bool) -> dict[str, str]:
    """SPEC 4's headers as admission leaves them; settlement sets the credit pair again."""
    headers = {
        "X-RateLimit-Limit": str(admission.rps_limit),
        "X-RateLimit-Remaining": str(max(0, admission.rps_remaining)),
    }
    if metered:
        limit = str(admission.concurrency_limit)
        current = str(admission.concurrency_current)
        left = str(max(0, admission.concurrency_limit - admission.concurrency_current))
        # cloro's docs say X-Concurrent-*, its OpenAPI says X-Concurrency-*: send both.
        headers["X-Concurrent-Limit"] = headers["X-Concurrency-Limit"] = limit
        headers["X-Concurrent-Current"] = headers["X-Concurrency-Current"] = current
        headers["X-Concurrent-Remaining"] = headers["X-Concurrency-Remaining"] = left
        headers["X-Credits-Charged"] = "0"
        headers["X-Credits-Remaining"] = str(admission.credits_remaining)
    return headers


def _refusal(admission: Admission, price: int | None) -> GatewayError:
    code = admission.code
    if code == "RATE_LIMIT_EXCEEDED":
        return RateLimitExceeded(
            details={"limit": admission.rps_limit}, headers={"Retry-After": "1"}
        )
    if code == "CONCURRENT_LIMIT_EXCEEDED":
        return ConcurrentLimitExceeded(
            details={"limit": admission.concurrency_limit, "current": admission.concurrency_current}
        )
    if code == "INSUFFICIENT_CREDITS":
        return InsufficientCredits(
            details={"required": price, "remaining": max(0, admission.credits_remaining)}
        )
    if code == "SUBSCRIPTION_INACTIVE":
        return SubscriptionInactive()
    if code == "IDEMPOTENCY_IN_FLIGHT":
        return IdempotencyConflict(
            "A request with this Idempotency-Key is still in flight",
            details={"field": "Idempotency-Key"},
        )
    if code == "IDEMPOTENCY_MISMATCH":
        return IdempotencyConflict(
            "This Idempotency-Key was used for a different request",
            details={"field": "Idempotency-Key"},
        )
    if code == "INSUFFICIENT_PERMISSIONS":
        return InsufficientPermissions("This route is open to enterprise accounts only")
    return InvalidApiKey()
