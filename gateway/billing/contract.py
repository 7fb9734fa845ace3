"""Enterprise contract terms (SPEC section 3)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from gateway.catalog.models import Price

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PosInt = Annotated[int, Field(ge=1, strict=True)]


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    credits_per_cycle: NonNegInt
    price_cents: NonNegInt
    concurrency: PosInt
    rate_limit_rps: PosInt
    overage: bool = False
    overage_rate_cents_per_1k: NonNegInt = 0
    prices: dict[str, Price] = Field(default_factory=dict)
    price_locked_until: datetime | None = None
    net_days: NonNegInt = 7

    @field_validator("price_locked_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a UTC offset, e.g. 2027-01-01T00:00:00Z")
        return value


class PriceBook(BaseModel):
    """What pricing needs of an enterprise account: its overrides and its locked prices."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prices: dict[str, Price] = Field(default_factory=dict)
    locked: dict[str, Price | None] = Field(default_factory=dict)
    locked_until: datetime | None = None
