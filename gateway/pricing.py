"""Pricing: a pure function of a route's price and the request body (SPEC section 2)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from gateway.billing.contract import PriceBook
from gateway.catalog.models import FlagRule, PerRule, Price, Route
from gateway.errors import ValidationFailed

_ABSENT = object()


def route_price(route: Route, book: PriceBook | None, now: datetime) -> Price | None:
    """The price that applies to this account: its contract's override, else the price locked
    when the contract was signed (until the lock ends), else the catalog's. None: unmetered."""
    if book is None:
        return route.price
    if route.name in book.prices:
        return book.prices[route.name]
    if book.locked_until is not None and now < book.locked_until and route.name in book.locked:
        return book.locked[route.name]
    return route.price


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
    document = parse_json(body)
    if not isinstance(document, dict):
        raise ValidationFailed("The request body must be a JSON object", details={"field": "body"})
    return document


def parse_json(body: bytes) -> Any:
    """The body as JSON with no key repeated in any object, or ValidationFailed."""
    try:
        return json.loads(body, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        # Parsers disagree on which of two equal keys wins: the upstream might read the other.
        raise ValidationFailed(
            f"The request body repeats the key {exc.args[0]!r}", details={"field": exc.args[0]}
        ) from exc
    # RecursionError: a small body of deeply nested brackets must be a 400, not a 500.
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValidationFailed("The request body must be JSON", details={"field": "body"}) from exc


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
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
