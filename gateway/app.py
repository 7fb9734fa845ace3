"""create_apps(settings, catalog, ...): the public and admin applications, sharing one Gateway."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import traceback
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from typing import Any

from aiohttp import web
from redis.exceptions import RedisClusterException, RedisError

from gateway import dashboard
from gateway.accesslog import AccessLog
from gateway.api import account, admin
from gateway.catalog.live import LiveCatalog
from gateway.catalog.models import Catalog, Limits
from gateway.clock import Clock, system_clock
from gateway.context import GATEWAY, Gateway
from gateway.errors import StoreError
from gateway.http import admin_middleware, public_middleware
from gateway.listener import EdgeRunner, add_security_headers
from gateway.metrics import Metrics
from gateway.proxy.auth import KeyCache
from gateway.proxy.handler import proxy
from gateway.proxy.http1 import UpstreamClient
from gateway.proxy.leases import InFlight, renew_forever
from gateway.proxy.pricebooks import PriceBooks
from gateway.queue import api as queue_api
from gateway.queue.dispatcher import Dispatcher
from gateway.queue.store import QueueStore
from gateway.reload import SUPERVISED_ENV
from gateway.settings import Settings
from gateway.store.accounts import Accounts
from gateway.store.billing import Billing
from gateway.store.connect import connect, is_cluster
from gateway.store.ledger import Ledger
from gateway.store.spool import Spool
from gateway.webhooks import api as webhooks_api
from gateway.webhooks.deliver import Deliverer

log = logging.getLogger(__name__)

MAX_LINE_BYTES = 8190  # the request line, so the URL too
MAX_FIELD_BYTES = 8190  # one header
MAX_HEADERS = 64
BACKLOG = 4096  # capped by the kernel's net.core.somaxconn
STOP_TRIES = 5  # cancellations (1 s apart) a stop sends a background task before giving up


def build_gateway(
    settings: Settings,
    catalog: Catalog,
    *,
    client: Any = None,
    clock: Clock = system_clock,
    metrics: Metrics | None = None,
    prepare_catalog: Callable[[Catalog], Catalog] | None = None,
) -> Gateway:
    """Wire the dependencies; nothing is opened until the public app starts."""
    metrics = metrics or Metrics()
    client = client if client is not None else connect(settings)
    ledger = Ledger(client, metrics, settings.redis_timeout_s)
    accounts = Accounts(client)
    prepare = prepare_catalog or (lambda c: c)
    metrics.config_last_reload.set(clock().timestamp())
    gw = Gateway(
        settings=settings,
        catalog=LiveCatalog(prepare(catalog)),
        client=client,
        metrics=metrics,
        clock=clock,
        ledger=ledger,
        accounts=accounts,
        keys=KeyCache(ledger, ttl_s=settings.key_cache_ttl_s),
        inflight=InFlight(metrics),
        billing=Billing(accounts),
        pricebooks=PriceBooks(accounts, ledger),
        spool=Spool(settings.spool_dir, metrics),
        access_log=AccessLog(
            settings.access_log, level=settings.log_level, fmt=settings.log_format
        ),
        prepare_catalog=prepare,
    )
    gw.dispatcher = Dispatcher(gw, QueueStore(ledger))
    return gw


def create_apps(gw: Gateway) -> tuple[web.Application, web.Application]:
    """The public and the admin application. Start the public one first: it owns resources."""
    public = web.Application(middlewares=[public_middleware])
    public[GATEWAY] = gw
    public.add_routes(account.routes)
    public.add_routes(webhooks_api.routes)
    public.add_routes(queue_api.routes)
    public.add_routes(dashboard.routes)
    # `100 Continue` is the handler's to send, once route, size and key are checked.
    public.router.add_route("*", "/{tail:.*}", proxy, expect_handler=_continue_later)
    public.on_response_prepare.append(add_security_headers)
    public.cleanup_ctx.extend(
        [
            _access_log,  # first in, last out: it takes the lines of requests cut at cleanup
            _upstream_client,
            _store_client,
            _lease_renewer,
            _renewal_sweeper,
            _spool_replayer,
            _queue,
            _webhook_deliverer,
        ]
    )

    admin_app = web.Application(middlewares=[admin_middleware])
    admin_app[GATEWAY] = gw
    admin_app.add_routes(admin.routes)
    admin_app.on_response_prepare.append(add_security_headers)
    return public, admin_app


async def _continue_later(request: web.Request) -> None:
    return None


async def _access_log(app: web.Application) -> AsyncIterator[None]:
    """Open the access log; flush and close it once the listener has drained."""
    access_log = app[GATEWAY].access_log
    access_log.open()
    yield
    access_log.close()


async def _upstream_client(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    gw.http = UpstreamClient()
    yield
    await gw.http.close()


async def _store_client(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    if is_cluster(gw.client):
        # Learn the slot map before the first burst: redis-py replaces its startup node
        # objects on first use, and commands racing that replacement fail.
        with contextlib.suppress(RedisClusterException, RedisError, OSError):
            await gw.client.initialize()
    yield
    await gw.ledger.batcher.aclose()
    await gw.client.aclose()


@contextlib.asynccontextmanager
async def _in_background(work: Coroutine[Any, Any, None]) -> AsyncIterator[None]:
    """Run `work` for as long as the block lasts, then cancel it and wait for it to stop (a
    few seconds at most: a stop must never hang on a stuck connection)."""
    task = asyncio.create_task(work)
    try:
        yield
    finally:
        # Cancel until it stops: a client library may swallow one cancellation (fakeredis's
        # pub/sub read does, when it comes just as the subscription starts); give up after a
        # few tries, so a stop never hangs on it.
        for _ in range(STOP_TRIES):
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
            if task.done():
                break
        else:
            where = "".join(traceback.format_list(traceback.extract_stack(task.get_stack()[-1])))
            log.warning(
                "background task did not stop in time",
                extra={"task": repr(task.get_coro()), "where": where},
            )
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", extra={"error": type(task.exception()).__name__})


async def _lease_renewer(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]

    def ttl() -> float:  # read on every round: a reload may change it
        return float(gw.catalog.current.catalog.limits.lease_ttl_s)

    async with _in_background(renew_forever(gw.inflight, gw.ledger, gw.clock, ttl)):
        yield


async def _queue(app: web.Application) -> AsyncIterator[None]:
    """Wake-ups of this process's waiters and the queue's slow sweep (SPEC 10)."""
    gw = app[GATEWAY]
    dispatcher = gw.dispatcher
    async with _in_background(dispatcher.listen_forever()), _in_background(
        dispatcher.sweep_forever()
    ):
        yield
    await dispatcher.aclose(float(gw.catalog.current.catalog.limits.shutdown_grace_s))


async def _renewal_sweeper(app: web.Application) -> AsyncIterator[None]:
    async with _in_background(sweep_renewals_forever(app[GATEWAY])):
        yield


async def sweep_renewals_forever(gw: Gateway) -> None:
    """Renew accounts whose cycle ended even if nobody touches them (R2)."""
    while True:
        await asyncio.sleep(gw.settings.renewal_sweep_s)
        try:
            await sweep_renewals(gw, gw.clock())
        except StoreError as exc:
            log.warning("renewal sweep stopped early: %s", exc)
        except Exception:  # a bug must not stop renewals for the life of the process
            log.exception("renewal sweep failed")


async def sweep_renewals(gw: Gateway, now: datetime) -> None:
    """One round: every account due by `now`. One that cannot be renewed is logged and
    skipped, so the accounts due after it are still renewed; a store failure ends the round."""
    for account_id in await gw.billing.due(now):
        try:
            await gw.billing.current(account_id, gw.catalog.current.catalog.plans, now)
        except StoreError:
            raise
        except Exception:
            log.exception("renewal of %s skipped", account_id, extra={"account_id": account_id})


async def _spool_replayer(app: web.Application) -> AsyncIterator[None]:
    gw = app[GATEWAY]
    async with _in_background(replay_spool_forever(gw)):
        yield
    await replay_spool(gw)  # a last try, so a clean stop leaves nothing behind if it can
    gw.spool.close()


async def replay_spool_forever(gw: Gateway, interval_s: float = 0.5) -> None:
    """Replay spooled settlements until they land; adopt dead processes' spools now and then."""
    rounds = 0
    while True:
        if rounds % 60 == 0:
            gw.spool.adopt_orphans()
        rounds += 1
        try:
            await replay_spool(gw)
        except Exception:  # a bug must not stop replays for the life of the process
            log.exception("spool replay failed")
        await asyncio.sleep(interval_s)


async def replay_spool(gw: Gateway) -> None:
    for who, order in gw.spool.pending():
        try:
            settled = await gw.ledger.settle(who, order)
        except StoreError:
            return  # still down: try again next round
        gw.spool.landed(order["request_id"])
        if settled.queued and not gw.draining:  # as on the hot path: the freed slot is wanted
            gw.dispatcher.kick(who.account_id, who.org_id)
        log.info(
            "spooled settlement landed",
            extra={
                "request_id": order["request_id"],
                "applied": settled.applied,
                "charged": settled.charged,
            },
        )


async def _webhook_deliverer(app: web.Application) -> AsyncIterator[None]:
    """Every process delivers webhooks, with an HTTP client of its own (not the upstreams')."""
    deliverer = Deliverer(app[GATEWAY])
    async with _in_background(deliverer.run_forever()):
        yield
    await deliverer.close()


@contextlib.asynccontextmanager
async def serving(
    gw: Gateway, *, host: str, port: int, admin_host: str, admin_port: int
) -> AsyncIterator[tuple[int, int]]:
    """Run both listeners; yields the bound (public, admin) ports (useful with port 0).

    On exit it drains (SPEC section 1): stop accepting, let in-flight requests finish for
    `limits.shutdown_grace_s`, cancel the rest (released, not charged), then close."""
    public, admin_app = create_apps(gw)
    grace = float(gw.catalog.current.catalog.limits.shutdown_grace_s)

    def limits() -> Limits:
        return gw.catalog.current.catalog.limits

    runners = [
        EdgeRunner(
            public,
            limits,
            access_log=None,
            shutdown_timeout=grace,
            # A client that hangs up does not cancel its handler: the upstream keeps working,
            # so the slot stays taken until it is done (SPEC 4).
            handler_cancellation=False,
            # Bodies are forwarded as received; pricing decodes a copy (proxy/inbound.py).
            auto_decompress=False,
            # Request line (URL) and header limits; beyond them aiohttp answers 400 itself.
            max_line_size=MAX_LINE_BYTES,
            max_field_size=MAX_FIELD_BYTES,
            max_headers=MAX_HEADERS,
        ),
        EdgeRunner(admin_app, limits, access_log=None, shutdown_timeout=1.0),
    ]
    # Ports are the process's own, unless it is one of a --workers parent's (SPEC 1).
    shared = os.environ.get(SUPERVISED_ENV) == "1"
    ports: list[int] = []
    try:
        for runner, (h, p) in zip(runners, ((host, port), (admin_host, admin_port)), strict=True):
            await runner.setup()
            # A deep accept queue: a burst of new connections waits instead of failing.
            site = web.TCPSite(runner, h, p, reuse_port=shared, backlog=BACKLOG)
            await site.start()
            ports.append(int(runner.addresses[0][1]))
        yield ports[0], ports[1]
    finally:
        gw.draining = True
        for listening in list(runners[0].sites):
            await listening.stop()
        cancelled = await gw.inflight.drain(
            float(gw.catalog.current.catalog.limits.shutdown_grace_s)
        )
        if cancelled:
            log.warning("shutdown grace ran out: %d requests released uncharged", cancelled)
        for runner in reversed(runners):
            await runner.cleanup()
