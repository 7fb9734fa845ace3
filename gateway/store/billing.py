"""Billing state in Redis: apply transitions with compare-and-set, renew, read the history."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.billing import changes
from gateway.billing.subscription import Transition
from gateway.catalog.models import Plan
from gateway.clock import to_ms
from gateway.errors import Conflict, NotFound, StoreError
from gateway.store import keys
from gateway.store.accounts import AccountRecord, Accounts
from gateway.store.scripts import APPLY

_ATTEMPTS = 8


class Billing:
    """Every billing write goes through `apply`: computed from a read state, applied only if
    that state is still current. Losers of a race re-read and recompute."""

    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.client = accounts.client

    async def apply(self, record: AccountRecord, transition: Transition) -> bool:
        fields = dict(transition.fields)
        if transition.org_concurrency is not None and record.kind == "public":
            for org in record.orgs:
                fields[f"org:{org.id}:limit"] = transition.org_concurrency
        flat: list[str | int] = []
        for name, value in fields.items():
            flat += [name, value]
        # A renewal bills this cycle's usage (overage), so it must not miss a late charge.
        used = str(record.used) if transition.kind == "renew" else ""
        floor = fields["allocation"] if transition.keeps_balance else ""
        applied = int(
            await APPLY.run(
                self.client,
                [keys.account(record.id), keys.billing(record.id)],
                [
                    record.version,
                    used,
                    floor,
                    len(fields),
                    *flat,
                    *(e.dumps() for e in transition.entries),
                ],
            )
        )
        if applied < 0:
            raise Conflict(
                "The allocation would drop below the credits used and held this cycle",
                details={"field": "allocation", "allocation": fields["allocation"]},
            )
        if not applied:
            return False
        if "cycle_end" in fields or "status" in fields:
            if fields.get("status", record.status) == "canceled":
                await self.client.zrem(keys.CYCLE_ENDS, record.id)
            else:
                end = int(fields.get("cycle_end", to_ms(record.cycle_end)))
                await self.client.zadd(keys.CYCLE_ENDS, {record.id: end})
        return True

    async def current(
        self, account_id: str, plans: dict[str, Plan], now: datetime
    ) -> AccountRecord:
        """The account with every cycle that ended by `now` renewed (R2: on the next touch)."""
        for _ in range(_ATTEMPTS):
            record = await self._get(account_id, now)
            transition = changes.renew(record.subscription(), plans, now)
            if transition is None:
                return record
            await self.apply(record, transition)  # won or lost the race: read again
        raise StoreError(f"account {account_id} kept changing during renewal")

    async def change(
        self,
        account_id: str,
        plans: dict[str, Plan],
        now: datetime,
        decide: Callable[[AccountRecord], Transition],
        *,
        dry_run: bool = False,
    ) -> tuple[AccountRecord, Transition]:
        """Renew if due, compute a transition on the current state, apply it (or just return
        it, for a preview). `decide` raises a GatewayError for a change that is not allowed."""
        for _ in range(_ATTEMPTS):
            record = await self.current(account_id, plans, now)
            transition = decide(record)
            if dry_run or await self.apply(record, transition):
                return record, transition
        raise StoreError(f"account {account_id} kept changing")

    async def history(self, account_id: str, limit: int = 1000) -> list[dict[str, Any]]:
        """Billing entries, newest first."""
        raw = await self.client.lrange(keys.billing(account_id), -limit, -1)
        return [json.loads(item) for item in reversed(raw)]

    async def due(self, now: datetime, limit: int = 200) -> list[str]:
        """Accounts whose cycle ended by `now`, for the sweeper."""
        ids = await self.client.zrangebyscore(keys.CYCLE_ENDS, "-inf", to_ms(now), 0, limit)
        return [str(i) for i in ids]

    async def _get(self, account_id: str, now: datetime) -> AccountRecord:
        record = await self.accounts.get(account_id, to_ms(now))
        if record is None:
            raise NotFound("No such account", details={"account_id": account_id})
        return record
