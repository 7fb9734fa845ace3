"""The dispatcher: whoever frees a slot gives it to the next entry of that org at once.

A settle, a finished task or a cancel that leaves entries queued calls `kick`: dispatch.lua
admits the org's waiting sync requests (their processes hear it on their wake channel) and
starts queued tasks, which this process then runs. No loop polls for work: other processes
learn of free slots through Redis pub/sub. A slow sweep only requeues the runs of dead
gateways, deletes tasks past retention and heals a queue whose dispatcher died."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError

from gateway.errors import GatewayError, StoreError, UpstreamError
from gateway.ids import random_base62
from gateway.proxy.upstream import UpstreamReply, forward, read_part
from gateway.queue.store import Dispatched, Failed, QueueStore, Started
from gateway.queue.tasks import COMPLETED, FAILED
from gateway.store import keys
from gateway.store.ledger import Identity, SettleOrder
from gateway.webhooks import outbox

if TYPE_CHECKING:
    from gateway.context import Gateway

log = logging.getLogger(__name__)
# Tasks one dispatch may start: their org's free slots bound it anyway.
MAX_START = 1000


class Dispatcher:
    """This process's side of the queues: dispatch, task runs, wake-ups, the sweep."""

    def __init__(self, gw: Gateway, store: QueueStore) -> None:
        self._gw = gw
        self.store = store
        self.process_id = random_base62(16)
        self.channel = keys.wake_channel(self.process_id)
        self._waiting: dict[str, asyncio.Future[str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.listening = asyncio.Event()

    # ----------------------------------------------------------------- dispatch

    def kick(self, account_id: str, org_id: str, since: float | None = None) -> None:
        """A slot of the org was freed and entries wait: dispatch them, in the background."""
        self.spawn(self._dispatch_quietly(account_id, org_id, since or time.perf_counter()))

    async def _dispatch_quietly(self, account_id: str, org_id: str, since: float) -> None:
        try:
            await self.dispatch(account_id, org_id, since)
        except StoreError as exc:  # the sweep dispatches the org again later
            log.warning("dispatch failed: %s", exc, extra={"account_id": account_id})

    async def dispatch(
        self,
        account_id: str,
        org_id: str,
        since: float,
        join: tuple[str, str] | None = None,
    ) -> Dispatched:
        """Run dispatch.lua for the org (renewing the account first if its cycle ended), then
        hand out what it decided: waiters' turns, tasks to run, tasks that failed."""
        gw = self._gw
        limits = gw.catalog.current.catalog.limits
        for _ in range(3):
            result = await self.store.dispatch(
                account_id,
                org_id,
                now_ms=gw.now_ms(),
                lease_ttl_ms=limits.lease_ttl_s * 1000,
                max_tasks=0 if gw.draining else MAX_START,
                max_waiting=limits.max_waiting_per_org,
                join=join,
            )
            if result.code != "RENEW":
                break
            await gw.billing.current(account_id, gw.catalog.current.catalog.plans, gw.clock())
        if result.reclaimed:
            gw.metrics.leases_reclaimed.inc(result.reclaimed)
        for decision in result.decided:
            if decision.channel == self.channel:
                self._decided(decision.request_id, decision.admission)
            else:
                await self._publish(decision.channel, f"{decision.request_id}|{decision.admission}")
        for task in result.started:
            self.spawn(self._run(account_id, org_id, task, since))
        await self._failed(account_id, result.failed)
        if gw.draining and result.code == "OK":
            # This process starts nothing now: another one may.
            await self._publish(keys.DISPATCH_CHANNEL, f"{account_id}|{org_id}")
        return result

    async def _failed(self, account_id: str, failed: list[Failed]) -> None:
        for task in failed:
            self._gw.metrics.async_tasks.labels(task.task_type, "failed").inc()
        if any(task.webhook_due for task in failed):
            await self.webhook_due(account_id)

    # ----------------------------------------------------------------- task runs

    async def _run(self, account_id: str, org_id: str, task: Started, since: float) -> None:
        """Send the task upstream as its route's POST, then settle and end it (finish.lua).
        A drain that cancels it hands it back to the queue."""
        gw = self._gw
        who = Identity(account_id, org_id, "")
        if gw.draining:  # dispatched as the drain began: start nothing, hand it back
            with contextlib.suppress(StoreError):
                await self._hand_back(account_id, task.id)
            return
        with gw.inflight.holding(who, task.id):
            started = time.perf_counter()
            gw.metrics.async_dispatch.observe(started - since)
            try:
                status, outcome, response, error = await self._call(account_id, org_id, task)
            except asyncio.CancelledError:
                with contextlib.suppress(StoreError):
                    await asyncio.shield(self._hand_back(account_id, task.id))
                raise
            order: SettleOrder = {
                "request_id": task.id,
                "now_ms": gw.now_ms(),
                "charge": outcome == COMPLETED,
                "price": task.price,
                "cycle": task.cycle_start_ms,
                "route": task.route,
                "status": status,
                "latency_ms": int((time.perf_counter() - started) * 1000),
                "idempotency_key": "",
                "response": "-",
            }
            finished = await self._finish(who, order, task, outcome, response, error)
        if finished is None:
            return
        if finished.applied:
            gw.metrics.async_tasks.labels(task.task_type, outcome.lower()).inc()
            if finished.charged:
                gw.metrics.per_route(task.route).credits_charged.inc(finished.charged)
        if finished.queued:
            self.kick(account_id, org_id)
        if finished.webhook_due:
            await self.webhook_due(account_id)

    async def _call(self, account_id: str, org_id: str, task: Started) -> tuple[int, str, str, str]:
        """(status for the request log, COMPLETED | FAILED, response JSON, error JSON)."""
        gw = self._gw
        catalog = gw.catalog.current.catalog
        route = next((r for r in catalog.routes if r.name == task.route), None)
        if route is None or route.path is None:
            return 502, FAILED, "", _error("UPSTREAM_ERROR", "The task's route is gone")
        headers = [
            ("Content-Type", "application/json"),
            ("X-Request-Id", task.id),
            ("X-Gateway-Account", account_id),
            ("X-Gateway-Org", org_id),
        ]
        try:
            reply = await forward(
                gw.http,
                catalog.upstreams[route.upstream],
                method="POST",
                path_qs=route.path,
                headers=headers,
                body=task.payload.encode(),
            )
            body = await _read_all(reply, catalog.limits.max_response_bytes)
        except GatewayError as exc:
            return exc.status, FAILED, "", _error(exc.code, exc.message)
        if not 200 <= reply.status < 300:
            message = f"The upstream answered {reply.status}"
            return reply.status, FAILED, "", _error("UPSTREAM_ERROR", message, reply.status)
        try:
            json.loads(body)
        except ValueError:
            message = "The upstream's answer was not JSON"
            return reply.status, FAILED, "", _error("UPSTREAM_ERROR", message, reply.status)
        return reply.status, COMPLETED, body.decode(), ""

    async def _finish(
        self,
        who: Identity,
        order: SettleOrder,
        task: Started,
        outcome: str,
        response: str,
        error: str,
    ) -> Any:
        """finish.lua, retried while the run's lease could still be alive: past that, the
        sweep queues the task again (and this run, being stale, would change nothing)."""
        gw = self._gw
        give_up = time.monotonic() + gw.catalog.current.catalog.limits.lease_ttl_s
        pause = 0.1
        while True:
            try:
                return await self.store.finish(
                    who,
                    order,
                    attempt=task.attempt,
                    status=outcome,
                    response=response,
                    error=error,
                )
            except StoreError as exc:
                if time.monotonic() > give_up:
                    log.warning("task %s could not end: %s", task.id, exc)
                    return None
                await asyncio.sleep(pause)
                pause = min(pause * 2, 2.0)

    async def _hand_back(self, account_id: str, task_id: str) -> None:
        """A draining gateway's unfinished task goes back to the queue (this run uncounted)."""
        options = self._gw.catalog.current.catalog.async_
        await self.store.sweep(
            account_id,
            now_ms=self._gw.now_ms(),
            max_attempts=options.max_attempts if options else 1,
            retention_ms=0,
            requeue=[task_id],
        )

    # ----------------------------------------------------------------- waiters

    def expect(self, request_id: str) -> asyncio.Future[str]:
        """A future for the decision on a request of this process that joins the line."""
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        return future

    def forget(self, request_id: str) -> None:
        self._waiting.pop(request_id, None)

    def _decided(self, request_id: str, admission: str) -> None:
        future = self._waiting.pop(request_id, None)
        if future is not None and not future.done():
            future.set_result(admission)

    # ----------------------------------------------------------------- pub/sub

    async def _publish(self, channel: str, message: str) -> None:
        try:
            await self._gw.ledger.call("queue", self._gw.client.publish(channel, message))
        except StoreError as exc:  # a waiter also reads its decision when its wait ends
            log.warning("publish failed: %s", exc)

    async def webhook_due(self, account_id: str) -> None:
        """After a terminal transition put a task in the outbox (the outbox contract)."""
        announced = outbox.announce(self._gw.client, account_id, self._gw.now_ms())
        try:
            await self._gw.ledger.call("queue", announced)
        except StoreError as exc:  # the webhooks side's reconciliation finds it
            log.warning("outbox index not updated: %s", exc)

    async def listen_forever(self) -> None:
        """Hear decisions on this process's waiters, and orgs other processes could not
        dispatch (they are draining). Reconnects after a store failure."""
        while True:
            pubsub = self._gw.client.pubsub()
            try:
                await pubsub.subscribe(self.channel, keys.DISPATCH_CHANNEL)
                self.listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._heard(str(message["channel"]), str(message["data"]))
            except (RedisError, OSError) as exc:
                self.listening.clear()
                log.warning("queue wake-ups lost, reconnecting: %s", exc)
                await asyncio.sleep(0.5)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _heard(self, channel: str, data: str) -> None:
        if channel == self.channel:
            request_id, _, admission = data.partition("|")
            self._decided(request_id, admission)
        elif not self._gw.draining:
            account_id, _, org_id = data.partition("|")
            self.kick(account_id, org_id)

    # ----------------------------------------------------------------- the sweep

    async def sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self._gw.settings.queue_sweep_s)
            try:
                await self.sweep()
            except StoreError as exc:
                log.warning("queue sweep stopped early: %s", exc)
            except Exception:  # a bug must not stop the sweep for the life of the process
                log.exception("queue sweep failed")

    async def sweep(self) -> None:
        """One round over every account that keeps tasks."""
        gw = self._gw
        options = gw.catalog.current.catalog.async_
        if options is None:
            return
        accounts = await gw.ledger.call("queue", gw.client.zrange(keys.TASK_ACCOUNTS, 0, -1))
        for account_id in accounts:
            swept = await self.store.sweep(
                account_id,
                now_ms=gw.now_ms(),
                max_attempts=options.max_attempts,
                retention_ms=options.retention_h * 3_600_000,
            )
            await self._failed(account_id, swept.failed)
            if not gw.draining:
                for org_id in swept.orgs:
                    await self.dispatch(account_id, org_id, time.perf_counter())
            if swept.retained == 0:
                await self._drop_if_empty(account_id)

    async def _drop_if_empty(self, account_id: str) -> None:
        """Remove, then check again: a task created meanwhile puts the account back."""
        client = self._gw.client
        await self._gw.ledger.call("queue", client.zrem(keys.TASK_ACCOUNTS, account_id))
        pipe = client.pipeline(transaction=False)
        pipe.hget(keys.account(account_id), "queued")
        pipe.hlen(keys.running(account_id))
        pipe.zcard(keys.finished(account_id))
        queued, running, finished = await self._gw.ledger.call("queue", pipe.execute())
        if int(queued or 0) or running or finished:
            await self.track(account_id)

    async def track(self, account_id: str) -> None:
        """The account keeps tasks: the sweep looks after it."""
        await self._gw.ledger.call(
            "queue",
            self._gw.client.zadd(keys.TASK_ACCOUNTS, {account_id: self._gw.now_ms()}, nx=True),
        )

    # ----------------------------------------------------------------- upkeep

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        # Keep a reference: the loop only holds weak ones to running tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self, grace_s: float) -> None:
        """At shutdown, after the drain: let dispatches and task runs that began meanwhile
        end for up to `grace_s`, then cancel the rest (a cancelled run hands its task back)."""
        deadline = time.monotonic() + grace_s
        while self._tasks and (left := deadline - time.monotonic()) > 0:
            await asyncio.wait(list(self._tasks), timeout=left)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)


async def _read_all(reply: UpstreamReply, limit: int) -> bytes:
    if reply.body.complete:
        body = reply.body.take_all()
    else:
        parts: list[bytes] = []
        size = 0
        while part := await read_part(reply):
            size += len(part)
            if size > limit:
                reply.body.abort()
                raise UpstreamError(
                    f"The upstream's reply exceeds {limit} bytes", details={"limit_bytes": limit}
                )
            parts.append(part)
        body = b"".join(parts)
    if len(body) > limit:
        raise UpstreamError(
            f"The upstream's reply exceeds {limit} bytes", details={"limit_bytes": limit}
        )
    return body


def _error(code: str, message: str, status: int | None = None) -> str:
    error: dict[str, Any] = {"code": code, "message": message}
    if status is not None:
        error["status"] = status
    return json.dumps(error)
