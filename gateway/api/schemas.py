"""Request bodies of the JSON APIs and the views they answer with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.clock import iso
from gateway.errors import ValidationFailed
from gateway.store.accounts import AccountRecord, OrgRecord

M = TypeVar("M", bound=BaseModel)


class CreateAccount(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=200)
    plan: str = Field(min_length=1)
    anchor: datetime | None = None


async def parse(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`, or 400 VALIDATION_ERROR naming the first bad field."""
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise ValidationFailed(f"{field}: {message}", details={"field": field}) from exc


def account_view(record: AccountRecord, org: OrgRecord) -> dict[str, Any]:
    """The `/v1/account` shape of SPEC section 6, as one org of the account sees it."""
    return {
        "account_id": record.id,
        "org_id": org.id,
        "name": record.name,
        "plan": record.plan,
        "contract": None,
        "status": record.status,
        "cycle": {"start": iso(record.cycle_start), "end": iso(record.cycle_end)},
        "credits": {
            "allocation": record.allocation,
            "used": record.used,
            "held": record.held,
            "remaining": record.remaining,
            "overage": record.overage,
        },
        "concurrency": {"limit": org.concurrency, "current": org.in_flight},
        "rate_limit": {"rps": record.rate_limit_rps},
        "pending_change": None,
    }


def admin_account_view(record: AccountRecord) -> dict[str, Any]:
    """The account view plus every org with its keys (SPEC section 7)."""
    view = account_view(record, record.orgs[0])
    view["id"] = record.id
    view["anchor"] = iso(record.anchor)
    view["created_at"] = iso(record.created_at)
    view["orgs"] = [
        {
            "id": org.id,
            "name": org.name,
            "concurrency": org.concurrency,
            "in_flight": org.in_flight,
            "keys": [
                {
                    "id": k.id,
                    "prefix": k.prefix,
                    "created_at": iso(k.created_at),
                    "revoked": k.revoked,
                }
                for k in org.keys
            ],
        }
        for org in record.orgs
    ]
    return view
