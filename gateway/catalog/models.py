"""Frozen, validated models of the catalog (SPEC section 2)."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

NonNegInt = Annotated[int, Field(ge=0, strict=True)]
PosInt = Annotated[int, Field(ge=1, strict=True)]
# Seconds: positive and finite (`.inf` passed once, then broke every deadline computed from
# it), and at most a day, so that every expiry derived from them fits the store.
Seconds = Annotated[float, Field(gt=0, le=86_400, allow_inf_nan=False)]

HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Upstream(_Frozen):
    url: str
    timeout_s: Seconds = 180.0
    connect_timeout_s: Seconds = 5.0

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")


class FlagRule(_Frozen):
    """Adds `credits` once when any of the `when` body paths is truthy."""

    when: tuple[str, ...]
    credits: NonNegInt

    @field_validator("when", mode="before")
    @classmethod
    def _one_or_many(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("when")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value or any(
            not path or path.startswith(".") or path.endswith(".") for path in value
        ):
            raise ValueError("must name one or more body paths like include.rawResponse")
        return value


class PerRule(_Frozen):
    """Adds `credits` for every unit of the integer body field `per` above `free`."""

    per: str
    credits: NonNegInt
    free: NonNegInt = 0
    min: NonNegInt = 1
    max: PosInt

    @model_validator(mode="after")
    def _bounds(self) -> PerRule:
        if self.max < self.free:
            raise ValueError("max must not be below free")
        if self.max < self.min:
            raise ValueError("max must not be below min")
        return self


def _rule_kind(value: object) -> str:
    if isinstance(value, dict):
        return "per" if "per" in value else "when"
    return "per" if isinstance(value, PerRule) else "when"


# Tagged by the key that names the rule, so a mistake in a `per` rule is reported against the
# `per` rule alone, not against both shapes.
Rule = Annotated[
    Annotated[FlagRule, Tag("when")] | Annotated[PerRule, Tag("per")],
    Discriminator(_rule_kind),
]


class Price(_Frozen):
    base: NonNegInt
    add: tuple[Rule, ...] = ()

    @property
    def reads_body(self) -> bool:
        return bool(self.add)


class Route(_Frozen):
    path: str | None = None
    path_prefix: str | None = None
    methods: tuple[str, ...] = ("GET",)
    upstream: str
    enterprise_only: bool = False
    price: Price | None = None

    @field_validator("methods")
    @classmethod
    def _known_methods(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        upper = tuple(m.upper() for m in value)
        unknown = sorted(set(upper) - HTTP_METHODS)
        if unknown:
            raise ValueError(f"unknown HTTP method(s) {', '.join(unknown)}")
        if not upper:
            raise ValueError("must list at least one method")
        return upper

    @model_validator(mode="after")
    def _one_matcher(self) -> Route:
        matcher = self.path if self.path is not None else self.path_prefix
        if (self.path is None) == (self.path_prefix is None):
            raise ValueError("give exactly one of path or path_prefix")
        if not matcher or not matcher.startswith("/"):
            raise ValueError("path must start with /")
        return self

    @property
    def name(self) -> str:
        """The label used in metrics, logs and usage: the configured path."""
        return self.path if self.path is not None else f"{self.path_prefix}*"


class Plan(_Frozen):
    price_cents: NonNegInt
    credits: NonNegInt
    concurrency: PosInt
    rate_limit_rps: PosInt
    # How long a sync request of this plan waits for a slot when it sends no `Prefer: wait`
    # (SPEC 10); capped by limits.max_queue_wait_s.
    queue_wait_s: Annotated[int, Field(ge=0, le=3600, strict=True)] = 0


class Limits(_Frozen):
    lease_ttl_s: Annotated[int, Field(ge=1, le=86_400, strict=True)] = 30
    max_request_body_bytes: PosInt = 1_048_576
    charge_on_client_cancel: bool = True
    shutdown_grace_s: NonNegInt = 30
    # The edge (SPEC 4): deadlines and sizes a client or an upstream cannot stretch.
    client_header_timeout_s: Seconds = 10.0
    client_body_timeout_s: Seconds = 30.0
    keepalive_timeout_s: Seconds = 75.0
    max_response_bytes: PosInt = 67_108_864
    max_kept_response_bytes: NonNegInt = 1_048_576
    # Plan changes, cancels and reactivations one account may make itself per hour (SPEC 6).
    max_subscription_changes_per_hour: PosInt = 10
    # Waiting for a slot (SPEC 10): the ceiling of `Prefer: wait=N`, and how many sync
    # requests of one org may wait at once (one more gets 429 at once).
    max_queue_wait_s: Annotated[int, Field(ge=0, le=3600, strict=True)] = 60
    max_waiting_per_org: NonNegInt = 100


class MetricsOptions(_Frozen):
    per_org: bool = False


class BillingOptions(_Frozen):
    # R4: `full` gives an upgraded cycle the new plan's whole credits; `prorated` only the
    # new plan's extra credits for the days left, as the price difference is prorated.
    upgrade_credits: Literal["full", "prorated"] = "full"


class WebhookOptions(_Frozen):
    """Deliveries of finished tasks (SPEC 11)."""

    header_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9-]{1,64}$")] = "X-Cloro-"
    attempts: Annotated[int, Field(ge=1, le=100, strict=True)] = 5
    backoff_s: tuple[Seconds, ...] = (120.0, 240.0, 480.0, 960.0)  # before attempt 2, 3, ...
    timeout_s: Seconds = 10.0
    allow_private_targets: bool = False  # true only for tests and the demo (loopback)

    @model_validator(mode="after")
    def _backoff_per_retry(self) -> WebhookOptions:
        if len(self.backoff_s) < self.attempts - 1:
            raise ValueError(
                f"backoff_s must list a wait before each of attempts 2..{self.attempts}"
            )
        return self


TaskType = Annotated[str, Field(pattern=r"^[A-Z][A-Z0-9_]{0,63}$")]


class AsyncOptions(_Frozen):
    """The async task API (SPEC 10); absent from the catalog: no async API (404)."""

    task_types: dict[TaskType, str]  # taskType -> the path of a metered POST route
    sync_surcharge: NonNegInt = 2  # an async task costs its route's price minus this (floor 0)
    max_batch: Annotated[int, Field(ge=1, le=10_000, strict=True)] = 500
    retention_h: Annotated[int, Field(ge=1, le=24 * 400, strict=True)] = 24
    max_attempts: Annotated[int, Field(ge=1, le=100, strict=True)] = 3
    webhooks: WebhookOptions = WebhookOptions()


class Catalog(_Frozen):
    upstreams: dict[str, Upstream]
    routes: tuple[Route, ...]
    plans: dict[str, Plan]
    limits: Limits = Limits()
    metrics: MetricsOptions = MetricsOptions()
    billing: BillingOptions = BillingOptions()
    # `async` is a Python keyword: the YAML key is read through the alias.
    async_: AsyncOptions | None = Field(default=None, alias="async")
    version: str = Field(default="", exclude=True)

    @field_validator("upstreams", "routes", "plans", mode="before")
    @classmethod
    def _not_empty(cls, value: object) -> object:
        # A catalog without any of these serves nothing (every route a 404). Checked before
        # the items, so an invalid route is reported as itself, not as "no routes".
        if isinstance(value, (dict, list, tuple)) and not value:
            raise ValueError("must list at least one")
        return value

    @model_validator(mode="after")
    def _cross_checks(self) -> Catalog:
        problems: list[str] = []
        seen: set[tuple[str, str, str]] = set()
        for index, route in enumerate(self.routes):
            if route.upstream not in self.upstreams:
                problems.append(f"routes[{index}].upstream: unknown upstream {route.upstream!r}")
            kind = "path" if route.path is not None else "path_prefix"
            matcher = route.path or route.path_prefix or ""
            for method in route.methods:
                if (kind, matcher, method) in seen:
                    problems.append(f"routes[{index}]: duplicate route {method} {matcher}")
                seen.add((kind, matcher, method))
        problems += self._task_type_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _task_type_problems(self) -> list[str]:
        """Every task type must name a metered POST route, matched by its exact path."""
        if self.async_ is None:
            return []
        metered = {
            route.path
            for route in self.routes
            if route.path is not None and "POST" in route.methods and route.price is not None
        }
        return [
            f"async.task_types.{name}: {path!r} is not the path of a metered POST route"
            for name, path in self.async_.task_types.items()
            if path not in metered
        ]

    def task_route(self, task_type: str) -> Route | None:
        """The POST route a task type runs, or None for an unknown type (or no async API)."""
        if self.async_ is None or task_type not in self.async_.task_types:
            return None
        path = self.async_.task_types[task_type]
        return next(r for r in self.routes if r.path == path and "POST" in r.methods)
