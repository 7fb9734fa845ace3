"""A task's view as `GET /v1/async/task/{id}` answers it (SPEC 10).

A stand-in for the webhooks branch, reading the task hash the queue writes; the queue's own
module replaces it (the webhooks side only calls `task_view`)."""

from __future__ import annotations

import json
from typing import Any

from gateway.clock import from_ms, iso
from gateway.store import keys

TERMINAL = ("COMPLETED", "FAILED")


async def task_view(store_client: Any, account_id: str, task_id: str) -> dict[str, Any] | None:
    """The task's answer, or None once the task is gone (retention)."""
    f = await store_client.hgetall(keys.task(account_id, task_id))
    if not f:
        return None
    task: dict[str, Any] = {
        "id": task_id,
        "taskType": f.get("type"),
        "status": f.get("status"),
        "priority": int(f.get("priority", 1)),
        "createdAt": iso(from_ms(int(f.get("created_at", 0)))),
        "idempotencyKey": f.get("idempotency_key") or None,
    }
    view: dict[str, Any] = {
        "task": task,
        "credits": {
            "creditsToCharge": int(f.get("price", 0)),
            "creditsCharged": int(f["charged"]) if "charged" in f else None,
        },
    }
    if f.get("status") in TERMINAL and "response" in f:
        view["response"] = json.loads(f["response"])
    return view
