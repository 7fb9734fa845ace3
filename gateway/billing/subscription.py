"""The billing state of an account, the history entries (R9) and the transitions between them."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.billing.contract import Contract
from gateway.clock import iso
from gateway.ids import new_id

CURRENCY = "usd"
IdFactory = Callable[[], str]


def new_entry_id() -> str:
    return new_id("bill")


@dataclass(frozen=True, slots=True)
class Subscription:
    """What the billing rules read of an account; a pure value."""

    account_id: str
    kind: str  # "public" | "enterprise"
    plan: str | None
    contract: Contract | None
    status: str  # "active" | "canceling" | "canceled"
    anchor: datetime
    cycle_start: datetime
    cycle_end: datetime
    allocation: int
    used: int
    # What one cycle of the current plan or contract costs this account, recorded when it
    # subscribed, renewed or changed plan; None in an account written before it was recorded.
    price_cents: int | None
    pending_plan: str | None = None
    version: int = 0
    held: int = 0  # credits held by requests in flight


@dataclass(frozen=True, slots=True)
class Entry:
    """One append-only billing history entry (R9)."""

    id: str
    account_id: str
    type: str
    occurred_at: datetime
    cycle_start: datetime
    cycle_end: datetime
    amount_cents: int
    credits: int
    description: str
    from_plan: str | None = None
    to_plan: str | None = None
    days_left: int | None = None
    days_total: int | None = None
    due_at: datetime | None = None
    currency: str = CURRENCY

    def as_json(self) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": self.id,
            "account_id": self.account_id,
            "type": self.type,
            "occurred_at": iso(self.occurred_at),
            "cycle_start": iso(self.cycle_start),
            "cycle_end": iso(self.cycle_end),
            "amount_cents": self.amount_cents,
            "currency": self.currency,
            "credits": self.credits,
            "description": self.description,
        }
        optional = {
            "from_plan": self.from_plan,
            "to_plan": self.to_plan,
            "days_left": self.days_left,
            "days_total": self.days_total,
            "due_at": iso(self.due_at) if self.due_at else None,
        }
        view.update({k: v for k, v in optional.items() if v is not None})
        return view

    def dumps(self) -> str:
        return json.dumps(self.as_json(), separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Transition:
    """A change to apply atomically: account fields to set and entries to append."""

    kind: str
    fields: dict[str, str | int]
    entries: tuple[Entry, ...]
    charge_cents: int = 0
    effective_at: datetime | None = None
    org_concurrency: int | None = None  # the public account's one org follows its plan
    # Apply only if the new `allocation` still covers the account's used + held credits at the
    # moment of writing (unless it may run into overage): a Conflict otherwise.
    keeps_balance: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
