"""The webhook outbox in the store: claim, acknowledge, fail, and the index of due accounts.

Each account's deliveries live in its own sorted set (`keys.outbox`, score = due time ms), so
that a delivery's every transition is one script on the account's slot. Deliverers find work
through a global index, `keys.OUTBOX_ACCOUNTS` (score = the account's earliest due time), which
lives on another Cluster slot and so cannot change in the same script. Whoever writes an
outbox entry writes the index after it with `ZADD LT` (the queue, when a task finishes; this
module, when it reschedules); a deliverer that raises or removes an account's index entry reads
the outbox again afterwards and lowers it back if it must (`reindex`), so an entry added
concurrently is never left unindexed. A process dying between the two writes is covered by the
slow reconciliation scan (`reconcile`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, RedisError

from gateway.store import keys
from gateway.store.scripts import OUTBOX_ACK, OUTBOX_CLAIM, OUTBOX_FAIL


@dataclass(frozen=True, slots=True)
class Failed:
    """What outbox_fail.lua made of a failed attempt."""

    outcome: str  # RETRY | FAILED | STALE | GONE
    due_ms: int  # the next attempt's due time when RETRY, else 0


async def announce(client: Any, account_id: str, due_ms: int) -> None:
    """After a script put a delivery in the account's outbox: index the account (ZADD LT) and
    wake the deliverers. The wake-up is best effort: without it the timer still delivers."""
    await client.zadd(keys.OUTBOX_ACCOUNTS, {account_id: due_ms}, lt=True)
    with contextlib.suppress(RedisError, RedisClusterException, OSError):
        await client.publish(keys.OUTBOX_WAKE, account_id)


async def claim(client: Any, account_id: str, *, now_ms: int, lease_ms: int) -> str | None:
    """The account's earliest due delivery (a task id), claimed for `lease_ms`; None if none."""
    task_id = await OUTBOX_CLAIM.run(client, [keys.outbox(account_id)], [now_ms, lease_ms])
    return str(task_id) if task_id else None


async def ack(client: Any, account_id: str, task_id: str, attempt: int) -> str:
    """Record a 2xx: DELIVERED, or STALE / GONE (see outbox_ack.lua)."""
    reply = await OUTBOX_ACK.run(
        client, [keys.outbox(account_id), keys.task(account_id, task_id)], [task_id, attempt]
    )
    return str(reply)


async def fail(
    client: Any,
    account_id: str,
    task_id: str,
    attempt: int,
    *,
    now_ms: int,
    attempts: int,
    wait_ms: int,
) -> Failed:
    """Record a failed attempt: retry after `wait_ms`, or give up after `attempts`."""
    reply = await OUTBOX_FAIL.run(
        client,
        [keys.outbox(account_id), keys.task(account_id, task_id)],
        [task_id, attempt, now_ms, attempts, wait_ms],
    )
    failed = Failed(str(reply[0]), int(reply[1]))
    if failed.outcome == "RETRY":
        await client.zadd(keys.OUTBOX_ACCOUNTS, {account_id: failed.due_ms}, lt=True)
    return failed


async def drop(client: Any, account_id: str, task_id: str) -> None:
    """Forget a delivery that cannot be made any more (its task is gone or has no webhook)."""
    await client.zrem(keys.outbox(account_id), task_id)


async def due_accounts(client: Any, *, now_ms: int, limit: int) -> list[str]:
    """Accounts whose earliest delivery may be due by `now_ms`, earliest first."""
    found = await client.zrangebyscore(keys.OUTBOX_ACCOUNTS, "-inf", now_ms, start=0, num=limit)
    return [str(account) for account in found]


async def next_due_ms(client: Any) -> int | None:
    """When the earliest delivery of any account is due (ms), or None when there is none."""
    head = await client.zrange(keys.OUTBOX_ACCOUNTS, 0, 0, withscores=True)
    return int(head[0][1]) if head else None


async def reindex(client: Any, account_id: str) -> None:
    """Set the account's index entry to its outbox's earliest due time, or remove it when the
    outbox is empty; then read the outbox again and lower the entry if an earlier delivery
    arrived meanwhile (every writer of an entry indexes it with ZADD LT after writing it, so
    between the two reads nothing is lost)."""
    outbox = keys.outbox(account_id)
    head = await client.zrange(outbox, 0, 0, withscores=True)
    if head:
        await client.zadd(keys.OUTBOX_ACCOUNTS, {account_id: int(head[0][1])})
    else:
        await client.zrem(keys.OUTBOX_ACCOUNTS, account_id)
    again = await client.zrange(outbox, 0, 0, withscores=True)
    if again:
        await client.zadd(keys.OUTBOX_ACCOUNTS, {account_id: int(again[0][1])}, lt=True)


async def reconcile(client: Any) -> int:
    """Index every account that has an outbox (on a Cluster, every master is scanned): repairs
    an index entry lost when a process died between finishing a task and indexing it.
    Returns how many outboxes were seen."""
    seen = 0
    scan = client.scan_iter(match=keys.OUTBOX_PATTERN, count=500)
    if isinstance(client, RedisCluster):
        scan = client.scan_iter(
            match=keys.OUTBOX_PATTERN, count=500, target_nodes=RedisCluster.PRIMARIES
        )
    async for name in scan:
        account_id = _account_of(str(name))
        head = await client.zrange(name, 0, 0, withscores=True)
        if account_id and head:
            await client.zadd(keys.OUTBOX_ACCOUNTS, {account_id: int(head[0][1])}, lt=True)
            seen += 1
    return seen


def _account_of(outbox_key: str) -> str | None:
    """`gw:{acct:<A>}:outbox` -> A."""
    prefix, suffix = "gw:{acct:", "}:outbox"
    if outbox_key.startswith(prefix) and outbox_key.endswith(suffix):
        return outbox_key[len(prefix) : -len(suffix)] or None
    return None
