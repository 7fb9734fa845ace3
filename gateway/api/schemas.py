"""Request bodies of the JSON APIs and the views they answer with."""

from __future__ import annotations

from datetime import datetime
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gateway.billing.contract import Contract
from gateway.clock import iso
from gateway.errors import ValidationFailed
from gateway.store.accounts import AccountRecord, OrgRecord

M = TypeVar("M", bound=BaseModel)

MAX_CREDIT_DELTA = 10**12  # SPEC 7: |delta| <= 10^12, far inside the scripts' exact integers


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CreateAccount(_Body):
    name: str = Field(min_length=1, max_length=200)
    plan: str | None = Field(default=None, min_length=1)
    contract: Contract | None = None
    anchor: datetime | None = None


class PlanChoice(_Body):
    plan: str = Field(min_length=1)


class CreditAdjustment(_Body):
    delta: int = Field(strict=True, ge=-MAX_CREDIT_DELTA, le=MAX_CREDIT_DELTA)
    reason: str = Field(min_length=1, max_length=500)


class NewOrg(_Body):
    name: str = Field(min_length=1, max_length=200)
    concurrency: int = Field(ge=1, strict=True)


class OrgPatch(_Body):
    name: str | None = Field(default=None, min_length=1, max_length=200)
    concurrency: int | None = Field(default=None, ge=1, strict=True)


async def parse(request: web.Request, model: type[M]) -> M:
    """The JSON body as `model`, or 400 VALIDATION_ERROR naming the first bad field."""
    try:
        raw = await request.read()
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(part) for part in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        raise ValidationFailed(f"{field}: {message}", details={"field": field}) from exc


def account_view(record: AccountRecord, org: OrgRecord) -> dict[str, Any]:
    """The `/v1/account` shape of SPEC section 6, as one org of the account sees it."""
    pending = None
    if record.pending_plan:
        pending = {"plan": record.pending_plan, "effective_at": iso(record.cycle_end)}
    return {
        "account_id": record.id,
        "org_id": org.id,
        "name": record.name,
        "plan": record.plan,
        "contract": record.contract.model_dump(mode="json") if record.contract else None,
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
        "pending_change": pending,
    }


def admin_account_view(record: AccountRecord) -> dict[str, Any]:
    """The account view plus every org with its keys (SPEC section 7)."""
    view = account_view(record, record.orgs[0])
    view["id"] = record.id
    view["kind"] = record.kind
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
