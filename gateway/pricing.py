"""Pricing: a pure function of a route's price and the request body (SPEC section 2)."""

from __future__ import annotations

import json
from typing import Any

from gateway.catalog.models import FlagRule, PerRule, Price
from gateway.errors import ValidationFailed

_ABSENT = object()


def price_of(price: Price, body: bytes) -> int:
    """Credits for one request: base plus every matching rule. Never negative."""
    if not price.reads_body:
        return price.base
    document = parse_body(body)
    total = price.base
    for rule in price.add:
        if isinstance(rule, FlagRule):
            if any(_truthy(lookup(document, path)) for path in rule.when):
                total += rule.credits
        else:
            total += rule.credits * max(0, _units(document, rule) - rule.free)
    return total


def parse_body(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or ValidationFailed."""
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ValidationFailed(
            "The request body must be a JSON object", details={"field": "body"}
        ) from exc
    if not isinstance(document, dict):
        raise ValidationFailed("The request body must be a JSON object", details={"field": "body"})
    return document


def lookup(document: dict[str, Any], path: str) -> Any:
    """The value at a dotted path, or _ABSENT."""
    node: Any = document
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def _truthy(value: Any) -> bool:
    return value is not _ABSENT and bool(value)


def _units(document: dict[str, Any], rule: PerRule) -> int:
    value = lookup(document, rule.per)
    if value is _ABSENT or value is None:
        return rule.free
    # bool is an int in Python; JSON true is not a page count.
    if not isinstance(value, int) or isinstance(value, bool) or not rule.min <= value <= rule.max:
        raise ValidationFailed(
            f"{rule.per} must be an integer from {rule.min} to {rule.max}",
            details={"field": rule.per, "min": rule.min, "max": rule.max},
        )
    return value
