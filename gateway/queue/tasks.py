"""The task model: what a task item may say (validation, pricing), and how a task reads.

A task's life is QUEUED -> PROCESSING -> COMPLETED | FAILED; the only transitions are the
store scripts' (enqueue.lua, dispatch.lua, finish.lua, cancel.lua, sweep.lua)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gateway.billing.contract import PriceBook
from gateway.catalog.models import Catalog
from gateway.clock import from_ms, iso
from gateway.errors import ValidationFailed
from gateway.ids import new_id
from gateway.pricing import price_of, route_price
from gateway.store import keys
from gateway.webhooks.targets import check_literal

QUEUED, PROCESSING, COMPLETED, FAILED = "QUEUED", "PROCESSING", "COMPLETED", "FAILED"
TERMINAL = frozenset({COMPLETED, FAILED})
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED)
MIN_PRIORITY, MAX_PRIORITY, DEFAULT_PRIORITY = 1, 10, 1


@dataclass(frozen=True, slots=True)
class NewTask:
    """A validated, priced task item, ready to queue."""

    id: str
    task_type: str
    route: str
    priority: int
    price: int  # creditsToCharge: the route's price minus the sync surcharge, floor 0
    enterprise_only: bool
    idempotency_key: str | None
    webhook_url: str | None
    payload: str  # JSON, as forwarded

    @property
    def idempotency_hash(self) -> str:
        if self.idempotency_key is None:
            return ""
        return hashlib.sha256(self.idempotency_key.encode()).hexdigest()


def new_task_id() -> str:
    """Unguessable: 24 base62 characters from the OS's CSPRNG (about 143 bits)."""
    return new_id("task", 24)


def parse_item(
    item: Any, catalog: Catalog, book: PriceBook | None, now: datetime, max_payload_bytes: int
) -> NewTask:
    """One task item of SPEC 10, checked and priced; ValidationFailed names the field."""
    if not isinstance(item, dict):
        raise _invalid("body", "A task must be a JSON object")
    options = catalog.async_
    assert options is not None
    task_type = item.get("taskType")
    route = catalog.task_route(task_type) if isinstance(task_type, str) else None
    if route is None or not isinstance(task_type, str):
        known = ", ".join(sorted(options.task_types))
        raise _invalid("taskType", f"taskType must be one of {known}")
    payload = item.get("payload")
    if not isinstance(payload, dict):
        raise _invalid("payload", "payload must be a JSON object")
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    if len(body) > max_payload_bytes:
        raise _invalid("payload", f"payload must be at most {max_payload_bytes} bytes")
    rule = route_price(route, book, now)
    assert rule is not None  # the catalog checks every task type names a metered route
    try:
        price = price_of(rule, body)
    except ValidationFailed as exc:
        field = exc.details.get("field", "body")
        raise ValidationFailed(
            exc.message, details={**exc.details, "field": f"payload.{field}"}
        ) from exc
    return NewTask(
        id=new_task_id(),
        task_type=task_type,
        route=route.name,
        priority=_priority(item.get("priority")),
        price=max(0, price - options.sync_surcharge),
        enterprise_only=route.enterprise_only,
        idempotency_key=_idempotency_key(item.get("idempotencyKey")),
        webhook_url=_webhook(item.get("webhook"), options.webhooks.allow_private_targets),
        payload=body.decode(),
    )


def _priority(value: Any) -> int:
    if value is None:
        return DEFAULT_PRIORITY
    # bool is an int in Python; JSON true is not a priority.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid("priority", "priority must be an integer from 1 to 10")
    if not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise _invalid("priority", "priority must be an integer from 1 to 10")
    return value


def _idempotency_key(value: Any) -> str | None:
    if value is None:
        return None
    if (
        not isinstance(value, str)
        or not 0 < len(value) <= 255
        or not value.isascii()
        or not value.isprintable()
    ):
        raise _invalid(
            "idempotencyKey", "idempotencyKey must be 1 to 255 printable ASCII characters"
        )
    return value


def _webhook(value: Any, allow_private: bool) -> str | None:
    if value is None:
        return None
    url = value.get("url") if isinstance(value, dict) else None
    if not isinstance(url, str):
        raise _invalid("webhook.url", "webhook must be an object with a url")
    # The URL rules and an IP literal here; a host name is resolved and checked by the API
    # handler off the event loop (webhooks.targets.verify_target), and again at each delivery.
    check_literal(url, allow_private=allow_private)
    return url


def _invalid(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(message, details={"field": field})


def summary(task_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """SPEC 10's TASK object of a stored task."""
    out: dict[str, Any] = {
        "id": task_id,
        "taskType": fields["type"],
        "status": fields["status"],
        "priority": int(fields["priority"]),
        "createdAt": iso(from_ms(int(fields["created_at"]))),
        "idempotencyKey": fields.get("idem_key"),
    }
    if fields.get("started_at"):
        out["startedAt"] = iso(from_ms(int(fields["started_at"])))
    if fields.get("completed_at"):
        out["completedAt"] = iso(from_ms(int(fields["completed_at"])))
    if fields.get("latency_ms"):
        out["latencyMs"] = int(fields["latency_ms"])
    return out


def view(task_id: str, fields: dict[str, str]) -> dict[str, Any]:
    """GET /v1/async/task/{id}'s answer (and the webhook's body)."""
    terminal = fields["status"] in TERMINAL
    out: dict[str, Any] = {
        "task": summary(task_id, fields),
        "credits": {
            "creditsToCharge": int(fields["price"]),
            "creditsCharged": int(fields.get("charged", 0)) if terminal else None,
        },
    }
    if terminal:
        if fields["status"] == COMPLETED:
            out["response"] = json.loads(fields.get("response", "null"))
        else:
            out["response"] = {"error": json.loads(fields.get("error", "{}"))}
    return out


async def task_view(store_client: Any, account_id: str, task_id: str) -> dict[str, Any] | None:
    """The task's view as GET answers it now; None once it is gone (retention) or never was."""
    fields: dict[str, str] = await store_client.hgetall(keys.task(account_id, task_id))
    if not fields or "status" not in fields:
        return None
    return view(task_id, fields)
