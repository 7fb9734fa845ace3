"""Accounts, orgs and API keys in Redis: the writes of the admin API and the reads behind views.

The account hash is the source of truth for everything the admit script needs. Index keys
(api key hash, org id, key id -> account) are written after it and never change."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.billing.contract import Contract, PriceBook
from gateway.billing.cycles import cycle_at
from gateway.billing.subscription import Entry, Subscription, new_entry_id
from gateway.catalog.models import Plan
from gateway.clock import from_ms, to_ms
from gateway.ids import new_id, random_base62
from gateway.store import keys

KEY_PREFIX = "sk_live_"


def new_api_key() -> str:
    """`sk_live_` + 32 base62 characters (SPEC section 3)."""
    return KEY_PREFIX + random_base62(32)


def org_json(name: str, created: datetime) -> str:
    return json.dumps({"name": name, "created_at": to_ms(created)})


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: str
    org_id: str
    prefix: str
    created_at: datetime
    revoked: bool


@dataclass(frozen=True, slots=True)
class OrgRecord:
    id: str
    name: str
    concurrency: int
    in_flight: int = 0
    keys: tuple[KeyRecord, ...] = ()
    created_at: datetime = field(default_factory=lambda: from_ms(0))


@dataclass(frozen=True, slots=True)
class AccountRecord:
    id: str
    name: str
    kind: str
    plan: str | None
    status: str
    anchor: datetime
    cycle_start: datetime
    cycle_end: datetime
    allocation: int
    used: int
    held: int
    rate_limit_rps: int
    overage_allowed: bool
    created_at: datetime
    price_cents: int | None = None  # None: written before the price paid was recorded
    pending_plan: str | None = None
    contract: Contract | None = None
    version: int = 0
    pricing_version: int = 0
    price_book: PriceBook | None = None
    orgs: tuple[OrgRecord, ...] = field(default=())

    @property
    def remaining(self) -> int:
        return self.allocation - self.used - self.held

    @property
    def overage(self) -> int:
        return max(0, self.used - self.allocation)

    def org(self, org_id: str) -> OrgRecord | None:
        return next((org for org in self.orgs if org.id == org_id), None)

    def subscription(self) -> Subscription:
        return Subscription(
            account_id=self.id,
            kind=self.kind,
            plan=self.plan,
            contract=self.contract,
            status=self.status,
            anchor=self.anchor,
            cycle_start=self.cycle_start,
            cycle_end=self.cycle_end,
            allocation=self.allocation,
            used=self.used,
            price_cents=self.price_cents,
            pending_plan=self.pending_plan,
            version=self.version,
            held=self.held,
        )


class Accounts:
    """Admin-side reads and writes; not on the hot path."""

    def __init__(self, client: Any) -> None:
        self.client = client

    async def create_public(
        self, *, name: str, plan_name: str, plan: Plan, anchor: datetime, now: datetime
    ) -> AccountRecord:
        """A public account on `plan`, with its one org."""
        return await self._create(
            name=name,
            anchor=anchor,
            now=now,
            concurrency=plan.concurrency,
            fields={
                "kind": "public",
                "plan": plan_name,
                "allocation": plan.credits,
                "rps": plan.rate_limit_rps,
                "overage": 0,
                "price_cents": plan.price_cents,
            },
            description=f"Subscribed to {plan_name}",
            to_plan=plan_name,
        )

    async def create_enterprise(
        self, *, name: str, contract: Contract, book: PriceBook, anchor: datetime, now: datetime
    ) -> AccountRecord:
        """An enterprise account; its first org starts with the contract's whole concurrency."""
        return await self._create(
            name=name,
            anchor=anchor,
            now=now,
            concurrency=contract.concurrency,
            fields={
                "kind": "enterprise",
                "plan": "",
                "allocation": contract.credits_per_cycle,
                "rps": contract.rate_limit_rps,
                "overage": 1 if contract.overage else 0,
                "price_cents": contract.price_cents,
                "contract": contract.model_dump_json(),
                "pricebook": book.model_dump_json(),
                "pv": 1,
            },
            description="Enterprise contract signed",
            to_plan="enterprise",
        )

    async def _create(
        self,
        *,
        name: str,
        anchor: datetime,
        now: datetime,
        concurrency: int,
        fields: dict[str, str | int],
        description: str,
        to_plan: str,
    ) -> AccountRecord:
        account_id, org_id = new_id("acct"), new_id("org")
        start, end = cycle_at(anchor, now)
        record: dict[str, str | int] = {
            "id": account_id,
            "name": name,
            "status": "active",
            "anchor": to_ms(anchor),
            "cycle_start": to_ms(start),
            "cycle_end": to_ms(end),
            "used": 0,
            "held": 0,
            "created_at": to_ms(now),
            "version": 0,
            "pv": 0,
            "pending_plan": "",
            f"org:{org_id}": org_json(name, now),
            f"org:{org_id}:limit": concurrency,
            **fields,
        }
        entry = Entry(
            new_entry_id(),
            account_id,
            "subscribe",
            now,
            start,
            end,
            int(record["price_cents"]),
            int(record["allocation"]),
            description,
            to_plan=to_plan,
        )
        # The account hash is written whole in one command; the indexes follow it.
        await self.client.hset(keys.account(account_id), mapping=record)
        await self.client.rpush(keys.billing(account_id), entry.dumps())
        await self.client.set(keys.org_index(org_id), account_id)
        await self.client.zadd(keys.CYCLE_ENDS, {account_id: to_ms(end)})
        created = await self.get(account_id)
        assert created is not None
        return created

    async def pricebook(self, account_id: str) -> tuple[str, PriceBook | None]:
        """The account's pricing version and, for a contract, its price book."""
        version, raw = await self.client.hmget(keys.account(account_id), "pv", "pricebook")
        book = PriceBook.model_validate_json(raw) if raw else None
        return str(version or "0"), book

    async def account_of_org(self, org_id: str) -> str | None:
        value = await self.client.get(keys.org_index(org_id))
        return None if value is None else str(value)

    async def create_key(self, org_id: str, now: datetime) -> tuple[KeyRecord, str] | None:
        """A new key for the org: its record and the plaintext, which is never stored."""
        account_id = await self.account_of_org(org_id)
        if account_id is None:
            return None
        key_id, plaintext = new_id("key"), new_api_key()
        record = KeyRecord(key_id, org_id, plaintext[:12], now, revoked=False)
        meta = {"org": org_id, "prefix": record.prefix, "created_at": to_ms(now), "revoked": False}
        await self.client.hset(
            keys.account(account_id),
            mapping={f"key:{key_id}": org_id, f"keymeta:{key_id}": json.dumps(meta)},
        )
        await self.client.set(keys.key_index(key_id), account_id)
        await self.client.set(keys.api_key(hash_key(plaintext)), f"{account_id}|{org_id}|{key_id}")
        return record, plaintext

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke at once: the admit script refuses a key whose `key:<id>` field is gone."""
        account_id = await self.client.get(keys.key_index(key_id))
        if account_id is None:
            return False
        account_key = keys.account(str(account_id))
        raw = await self.client.hget(account_key, f"keymeta:{key_id}")
        if raw is None:
            return False
        await self.client.hdel(account_key, f"key:{key_id}")
        meta = json.loads(raw)
        meta["revoked"] = True
        await self.client.hset(account_key, f"keymeta:{key_id}", json.dumps(meta))
        return True

    async def get(self, account_id: str, now_ms: int | None = None) -> AccountRecord | None:
        """The whole account with its orgs, keys and (given `now_ms`) leases in flight."""
        raw: dict[str, str] = await self.client.hgetall(keys.account(account_id))
        if not raw:
            return None
        return await self._record(raw, now_ms)

    async def _record(self, raw: dict[str, str], now_ms: int | None) -> AccountRecord:
        key_records: dict[str, list[KeyRecord]] = {}
        for name, value in raw.items():
            if name.startswith("keymeta:"):
                meta = json.loads(value)
                key_records.setdefault(meta["org"], []).append(
                    KeyRecord(
                        name.removeprefix("keymeta:"),
                        meta["org"],
                        meta["prefix"],
                        from_ms(int(meta["created_at"])),
                        bool(meta["revoked"]),
                    )
                )
        orgs = []
        for name, value in raw.items():
            if name.startswith("org:") and not name.endswith(":limit"):
                org_id = name.removeprefix("org:")
                in_flight = 0
                if now_ms is not None:
                    # Leases expiring exactly now are already reclaimable, as in admit.lua.
                    in_flight = await self.client.zcount(
                        keys.leases(raw["id"], org_id), f"({now_ms}", "+inf"
                    )
                meta = json.loads(value)
                orgs.append(
                    OrgRecord(
                        org_id,
                        meta["name"],
                        int(raw[f"org:{org_id}:limit"]),
                        in_flight,
                        tuple(sorted(key_records.get(org_id, []), key=lambda k: k.created_at)),
                        from_ms(int(meta.get("created_at", 0))),
                    )
                )
        # The first org is the oldest: it came with the account.
        orgs.sort(key=lambda org: (org.created_at, org.id))
        return AccountRecord(
            id=raw["id"],
            name=raw["name"],
            kind=raw["kind"],
            plan=raw.get("plan") or None,
            status=raw["status"],
            anchor=from_ms(int(raw["anchor"])),
            cycle_start=from_ms(int(raw["cycle_start"])),
            cycle_end=from_ms(int(raw["cycle_end"])),
            allocation=int(raw["allocation"]),
            used=int(raw["used"]),
            held=int(raw["held"]),
            rate_limit_rps=int(raw["rps"]),
            overage_allowed=raw.get("overage") == "1",
            created_at=from_ms(int(raw["created_at"])),
            price_cents=int(raw["price_cents"]) if "price_cents" in raw else None,
            pending_plan=raw.get("pending_plan") or None,
            contract=Contract.model_validate_json(raw["contract"]) if raw.get("contract") else None,
            version=int(raw.get("version", 0)),
            pricing_version=int(raw.get("pv", 0)),
            price_book=PriceBook.model_validate_json(raw["pricebook"])
            if raw.get("pricebook")
            else None,
            orgs=tuple(orgs),
        )
