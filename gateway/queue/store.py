"""Typed calls on the queue's scripts (store/lua: enqueue, dispatch, finish, cancel, sweep,
leave) and the queue's reads. Every key is under the account's hash tag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from gateway.queue.tasks import MAX_PRIORITY, MIN_PRIORITY, NewTask
from gateway.store import keys
from gateway.store.ledger import RECLAIMED_MEMORY_MS, Identity, Ledger, SettleOrder
from gateway.store.scripts import CANCEL, DISPATCH, ENQUEUE, FINISH, LEAVE, SWEEP

SWEEP_DELETIONS = 500  # terminal tasks deleted per account and sweep, at most


@dataclass(frozen=True, slots=True)
class Decision:
    """A waiting request's turn, decided by dispatch.lua: its admission, as admit answers."""

    request_id: str
    channel: str
    admission: str  # "<code>|<rps limit>|<rps remaining>|<conc limit>|<conc current>|..."


@dataclass(frozen=True, slots=True)
class Started:
    """A task dispatch.lua made PROCESSING: this process runs it."""

    id: str
    attempt: int
    route: str
    price: int
    cycle_start_ms: int
    payload: str
    task_type: str


@dataclass(frozen=True, slots=True)
class Failed:
    """A task a script ended FAILED without running it."""

    id: str
    task_type: str
    code: str
    webhook_due: bool


@dataclass(frozen=True, slots=True)
class Dispatched:
    code: str  # OK | RENEW | FULL
    reclaimed: int
    decided: list[Decision]
    started: list[Started]
    failed: list[Failed]


@dataclass(frozen=True, slots=True)
class Finished:
    applied: bool
    charged: int
    credits_remaining: int
    queued: int
    webhook_due: bool


@dataclass(frozen=True, slots=True)
class Swept:
    requeued: int
    failed: list[Failed]
    orgs: list[str]
    retained: int


class QueueStore:
    """The queue's view of the store; every call goes through the ledger's deadline and
    breaker (op "queue"), dispatch and finish through its pipelined batcher."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.client = ledger.client

    async def enqueue(self, who: Identity, now_ms: int, items: Sequence[NewTask]) -> list[str]:
        """One code per item (enqueue.lua), or ["RENEW"]: renew the account, then again."""
        a, o = who.account_id, who.org_id
        args: list[str | int] = [keys.prefix(a), o, now_ms, len(items)]
        for t in items:
            args += [
                t.id,
                t.task_type,
                t.route,
                t.priority,
                t.price,
                1 if t.enterprise_only else 0,
                t.idempotency_hash,
                t.idempotency_key or "",
                t.webhook_url or "",
                t.payload,
            ]
        script_keys = [
            keys.account(a),
            keys.queue(a, o),
            keys.org_tasks(a, o),
            keys.task_idempotency(a),
        ]
        reply = await self._ledger.call("queue", ENQUEUE.run(self.client, script_keys, args))
        return [str(code) for code in (reply if reply[0] == "RENEW" else reply[1:])]

    async def dispatch(
        self,
        account_id: str,
        org_id: str,
        *,
        now_ms: int,
        lease_ttl_ms: int,
        max_tasks: int,
        max_waiting: int,
        join: tuple[str, str] | None = None,
    ) -> Dispatched:
        """Give the org's free slots to its waiters, then its queued tasks (dispatch.lua)."""
        a = account_id
        reply = await self._ledger.call(
            "queue",
            self._ledger.batcher.run(
                DISPATCH,
                [
                    keys.account(a),
                    keys.leases(a, org_id),
                    keys.holds(a),
                    keys.reclaimed(a),
                    keys.queue(a, org_id),
                    keys.waiting(a, org_id),
                    keys.waiters(a),
                    keys.running(a),
                    keys.finished(a),
                    keys.outbox(a),
                ],
                [
                    keys.prefix(a),
                    org_id,
                    now_ms,
                    lease_ttl_ms,
                    RECLAIMED_MEMORY_MS,
                    max_tasks,
                    join[0] if join else "",
                    join[1] if join else "",
                    max_waiting,
                ],
            ),
            deadline=False,
        )
        decided, started, failed = reply[2], reply[3], reply[4]
        return Dispatched(
            code=str(reply[0]),
            reclaimed=int(reply[1]),
            decided=[
                Decision(*(str(v) for v in decided[i : i + 3])) for i in range(0, len(decided), 3)
            ],
            started=[
                Started(
                    str(started[i]),
                    int(started[i + 1]),
                    str(started[i + 2]),
                    int(started[i + 3]),
                    int(started[i + 4]),
                    str(started[i + 5]),
                    str(started[i + 6]),
                )
                for i in range(0, len(started), 7)
            ],
            failed=[
                Failed(
                    str(failed[i]), str(failed[i + 1]), str(failed[i + 2]), bool(int(failed[i + 3]))
                )
                for i in range(0, len(failed), 4)
            ],
        )

    async def finish(
        self,
        who: Identity,
        order: SettleOrder,
        *,
        attempt: int,
        status: str,
        response: str,
        error: str,
    ) -> Finished:
        """Settle the run and end the task (finish.lua); a stale run changes nothing."""
        a = who.account_id
        reply = await self._ledger.call(
            "queue",
            self._ledger.batcher.run(
                FINISH,
                [
                    *self._ledger.settle_keys(who, order),
                    keys.task(a, order["request_id"]),
                    keys.running(a),
                    keys.finished(a),
                    keys.outbox(a),
                ],
                [*self._ledger.settle_args(who, order), attempt, status, response, error],
            ),
            deadline=False,
        )
        return Finished(
            bool(int(reply[0])), int(reply[1]), int(reply[2]), int(reply[3]), bool(int(reply[4]))
        )

    async def cancel(self, who: Identity, task_id: str, now_ms: int) -> tuple[str, str, bool]:
        """(code, task type, webhook due): code OK | NOT_FOUND | CONFLICT (cancel.lua)."""
        a, o = who.account_id, who.org_id
        reply = await self._ledger.call(
            "queue",
            CANCEL.run(
                self.client,
                [
                    keys.account(a),
                    keys.task(a, task_id),
                    keys.queue(a, o),
                    keys.finished(a),
                    keys.outbox(a),
                ],
                [task_id, o, now_ms],
            ),
        )
        return str(reply[0]), str(reply[1]), bool(int(reply[2]))

    async def sweep(
        self,
        account_id: str,
        *,
        now_ms: int,
        max_attempts: int,
        retention_ms: int,
        requeue: Sequence[str] = (),
    ) -> Swept:
        """Requeue dead runs, delete expired tasks (sweep.lua); with `requeue`, only hand
        those tasks back to the queue."""
        a = account_id
        reply = await self._ledger.call(
            "queue",
            SWEEP.run(
                self.client,
                [
                    keys.account(a),
                    keys.holds(a),
                    keys.reclaimed(a),
                    keys.running(a),
                    keys.finished(a),
                    keys.outbox(a),
                    keys.task_idempotency(a),
                ],
                [keys.prefix(a), now_ms, max_attempts, retention_ms, SWEEP_DELETIONS, *requeue],
            ),
        )
        failed = reply[1]
        return Swept(
            requeued=int(reply[0]),
            failed=[
                Failed(
                    str(failed[i]),
                    str(failed[i + 1]),
                    "ATTEMPTS_EXHAUSTED",
                    bool(int(failed[i + 2])),
                )
                for i in range(0, len(failed), 3)
            ],
            orgs=[str(o) for o in reply[2]],
            retained=int(reply[3]),
        )

    async def leave(self, who: Identity, request_id: str) -> tuple[str, str | None]:
        """A waiter leaves the line: ("LEFT", None) | ("DECIDED", admission) | ("NONE", None)."""
        a = who.account_id
        reply = await self._ledger.call(
            "queue",
            LEAVE.run(
                self.client,
                [keys.account(a), keys.waiting(a, who.org_id), keys.waiters(a)],
                [request_id, who.org_id],
            ),
        )
        return str(reply[0]), (str(reply[1]) if len(reply) > 1 else None)

    async def queued_total(self) -> int:
        """Tasks queued in the whole store: the accounts' `queued` counters, summed."""
        accounts = await self._ledger.call("queue", self.client.zrange(keys.TASK_ACCOUNTS, 0, -1))
        if not accounts:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for account_id in accounts:
            pipe.hget(keys.account(account_id), "queued")
        return sum(int(n or 0) for n in await self._ledger.call("queue", pipe.execute()))

    async def forget_decision(self, account_id: str, request_id: str) -> None:
        """The waiter heard its decision: its record is no longer needed."""
        await self._ledger.call("queue", self.client.hdel(keys.waiters(account_id), request_id))

    async def get(self, account_id: str, task_id: str) -> dict[str, str]:
        fields: dict[str, str] = await self._ledger.call(
            "queue", self.client.hgetall(keys.task(account_id, task_id))
        )
        return fields

    async def status(self, who: Identity, now_ms: int) -> dict[str, Any]:
        """SPEC 10's /v1/async/status of the key's org."""
        a, o = who.account_id, who.org_id
        pipe = self.client.pipeline(transaction=False)
        queue = keys.queue(a, o)
        for p in range(MAX_PRIORITY, MIN_PRIORITY - 1, -1):
            low = (10 - p) * 10**13
            pipe.zcount(queue, low, low + 10**13 - 1)
        pipe.hvals(keys.running(a))
        pipe.zcount(keys.leases(a, o), f"({now_ms}", "+inf")
        pipe.hget(keys.account(a), f"org:{o}:limit")
        replies = await self._ledger.call("queue", pipe.execute())
        counts = [int(n) for n in replies[:10]]
        return {
            "queuedTasks": sum(counts),
            "processingTasks": sum(1 for org in replies[10] if org == o),
            "priorityBreakdown": [
                {"priority": MAX_PRIORITY - i, "count": n} for i, n in enumerate(counts) if n
            ],
            "concurrency": {"used": int(replies[11]), "max": int(replies[12] or 0)},
        }

    async def listing(
        self, who: Identity, status: str | None, limit: int, scan_limit: int = 10_000
    ) -> list[tuple[str, dict[str, str]]]:
        """The org's retained tasks, newest first, of one status if given: pages of the
        org's task index, read until `limit` match (at most `scan_limit` looked at)."""
        a = who.account_id
        found: list[tuple[str, dict[str, str]]] = []
        page = max(limit, 100) if status else limit
        start = 0
        while len(found) < limit and start < scan_limit:
            ids = await self._ledger.call(
                "queue",
                self.client.zrevrange(keys.org_tasks(a, who.org_id), start, start + page - 1),
            )
            if not ids:
                break
            pipe = self.client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hgetall(keys.task(a, task_id))
            for task_id, fields in zip(
                ids, await self._ledger.call("queue", pipe.execute()), strict=True
            ):
                if fields and (status is None or fields.get("status") == status):
                    found.append((str(task_id), fields))
            start += page
        return found[:limit]
