"""Pricing (SPEC section 2): credits are base + every matching `add` rule of the route's price."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from gateway.catalog.models import FlagRule, PerRule, Price
from gateway.errors import ValidationFailed
from gateway.pricing import price_of

# The spec's chatgpt route: base 7 (sync surcharge included), +2 for a raw response, +2 once
# for ads and/or shopping, +2 per page beyond the first, pages in 1..10.
CHATGPT = Price.model_validate(
    {
        "base": 7,
        "add": [
            {"when": "include.rawResponse", "credits": 2},
            {"when": ["include.ads", "include.shopping"], "credits": 2},
            {"per": "pages", "credits": 2, "free": 1, "max": 10},
        ],
    }
)

FALSY = [False, 0, 0.0, "", None, [], {}]
TRUTHY = [True, 1, -1, 0.5, "no", "false", [0], {"a": None}]


def body(document: Any) -> bytes:
    return json.dumps(document).encode()


# --------------------------------------------------------------------------- the price table


@pytest.mark.parametrize(
    ("document", "credits"),
    [
        pytest.param({}, 7, id="empty object"),
        pytest.param({"prompt": "best running shoes", "country": "US"}, 7, id="unrelated fields"),
        pytest.param({"include": {}}, 7, id="empty include"),
        pytest.param({"include": {"markdown": True}}, 7, id="unpriced include flag"),
        pytest.param({"include": {"rawResponse": True}}, 9, id="rawResponse"),
        pytest.param({"include": {"ads": True}}, 9, id="ads"),
        pytest.param({"include": {"shopping": True}}, 9, id="shopping"),
        pytest.param({"include": {"ads": True, "shopping": True}}, 9, id="ads+shopping once"),
        pytest.param({"include": {"ads": False, "shopping": True}}, 9, id="one of ads/shopping"),
        pytest.param({"include": {"rawResponse": True, "ads": True}}, 11, id="raw+ads"),
        pytest.param(
            {"include": {"rawResponse": True, "ads": True, "shopping": True}}, 11, id="all flags"
        ),
        pytest.param({"pages": 1}, 7, id="pages 1 is free"),
        pytest.param({"pages": 2}, 9, id="pages 2"),
        pytest.param({"pages": 3}, 11, id="pages 3"),
        pytest.param({"pages": 10}, 25, id="pages 10"),
        pytest.param({"pages": None}, 7, id="pages null adds nothing"),
        pytest.param(
            {"pages": 10, "include": {"rawResponse": True, "ads": True, "shopping": True}},
            29,
            id="everything",
        ),
        # The rule paths are nested: neither a dotted top-level key nor a non-object parent.
        pytest.param({"include.rawResponse": True}, 7, id="dotted key is not a path"),
        pytest.param({"include": True}, 7, id="include is true"),
        pytest.param({"include": "rawResponse"}, 7, id="include is a string"),
        pytest.param({"include": ["rawResponse", "ads"]}, 7, id="include is a list"),
        pytest.param({"rawResponse": True, "ads": True}, 7, id="flags at the top level"),
    ],
)
def test_chatgpt_price_table(document: dict[str, Any], credits: int) -> None:
    assert price_of(CHATGPT, body(document)) == credits


@pytest.mark.parametrize("value", FALSY, ids=repr)
@pytest.mark.parametrize("flag", ["rawResponse", "ads", "shopping"])
def test_falsy_flag_values_add_nothing(flag: str, value: Any) -> None:
    assert price_of(CHATGPT, body({"include": {flag: value}})) == 7


@pytest.mark.parametrize("value", TRUTHY, ids=repr)
@pytest.mark.parametrize("flag", ["rawResponse", "ads", "shopping"])
def test_truthy_flag_values_add_their_credits(flag: str, value: Any) -> None:
    assert price_of(CHATGPT, body({"include": {flag: value}})) == 9


@pytest.mark.parametrize("pages", range(1, 11))
def test_each_page_beyond_the_first_costs_two(pages: int) -> None:
    assert price_of(CHATGPT, body({"pages": pages})) == 7 + 2 * (pages - 1)


def test_whitespace_and_key_order_do_not_matter() -> None:
    raw = b'  {\n "pages" : 3 ,\n "include": {"shopping": 1, "rawResponse": "y"}}\n'
    assert price_of(CHATGPT, raw) == 7 + 4 + 2 + 2


# --------------------------------------------------------------------------- rejected bodies


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"not json", id="text"),
        pytest.param(b"", id="empty"),
        pytest.param(b'{"pages": 3', id="truncated object"),
        pytest.param(b"{'pages': 3}", id="single quotes"),
        pytest.param(b"\xff\xfe\x00", id="not utf-8"),
        pytest.param(b"[]", id="empty array"),
        pytest.param(b'[{"pages": 3}]', id="array of objects"),
        pytest.param(b'"pages"', id="string"),
        pytest.param(b"3", id="number"),
        pytest.param(b"null", id="null"),
        pytest.param(b"true", id="boolean"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_rejected(raw: bytes) -> None:
    with pytest.raises(ValidationFailed) as caught:
        price_of(CHATGPT, raw)
    assert caught.value.details == {"field": "body"}
    assert caught.value.status == 400
    assert caught.value.code == "VALIDATION_ERROR"


@pytest.mark.parametrize(
    "pages",
    [
        pytest.param(0, id="0"),
        pytest.param(-1, id="negative"),
        pytest.param(11, id="11"),
        pytest.param(10**30, id="huge"),
        pytest.param("3", id="string"),
        pytest.param(2.5, id="fraction"),
        pytest.param(3.0, id="float"),
        pytest.param(True, id="true"),
        pytest.param(False, id="false"),
        pytest.param([3], id="list"),
        pytest.param({"n": 3}, id="object"),
    ],
)
def test_pages_must_be_an_integer_in_range(pages: Any) -> None:
    with pytest.raises(ValidationFailed) as caught:
        price_of(CHATGPT, body({"pages": pages}))
    assert caught.value.details == {"field": "pages", "min": 1, "max": 10}
    assert "pages" in caught.value.message


def test_an_invalid_page_count_is_rejected_even_when_other_rules_match() -> None:
    with pytest.raises(ValidationFailed) as caught:
        price_of(CHATGPT, body({"include": {"rawResponse": True}, "pages": 0}))
    assert caught.value.details["field"] == "pages"


def test_a_nested_per_field_is_named_by_its_dotted_path() -> None:
    price = Price(base=1, add=(PerRule(per="options.depth", credits=1, max=3),))
    assert price_of(price, body({"options": {"depth": 3}})) == 1 + 3
    with pytest.raises(ValidationFailed) as caught:
        price_of(price, body({"options": {"depth": 4}}))
    assert caught.value.details["field"] == "options.depth"


def test_a_deeply_nested_body_is_a_validation_error() -> None:
    # Well under the default 1 MiB body limit; json.loads recurses once per bracket.
    with pytest.raises(ValidationFailed):
        price_of(CHATGPT, b'{"a": ' + b"[" * 100_000)


# --------------------------------------------------------------------------- unread bodies


@pytest.mark.parametrize("raw", [b"not json", b"", b"[1, 2]", b"\xff", b'{"pages": 999}'])
def test_a_price_without_rules_never_parses_the_body(raw: bytes) -> None:
    price = Price(base=5)
    assert not price.reads_body
    assert price_of(price, raw) == 5


def test_a_free_route_price_costs_nothing() -> None:
    assert price_of(Price(base=0), b"anything") == 0


# --------------------------------------------------------------------------- the models


def test_a_single_when_path_is_a_one_element_tuple() -> None:
    rule = FlagRule.model_validate({"when": "include.ads", "credits": 2})
    assert rule.when == ("include.ads",)
    assert FlagRule(when=("a", "b.c"), credits=2).when == ("a", "b.c")


def test_per_rule_defaults_to_min_1_and_nothing_free() -> None:
    rule = PerRule(per="pages", credits=2, max=10)
    assert (rule.min, rule.free) == (1, 0)
    assert price_of(Price(base=0, add=(rule,)), body({"pages": 4})) == 8


def test_a_per_rule_with_min_0_accepts_zero_units() -> None:
    price = Price(base=3, add=(PerRule(per="n", credits=5, min=0, max=4),))
    assert price_of(price, body({"n": 0})) == 3
    assert price_of(price, body({"n": 4})) == 3 + 20


def test_rules_can_price_with_zero_credits() -> None:
    price = Price(
        base=4,
        add=(FlagRule(when=("x",), credits=0), PerRule(per="n", credits=0, max=5)),
    )
    assert price_of(price, body({"x": True, "n": 5})) == 4


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"base": -1}, id="negative base"),
        pytest.param({"base": 1.5}, id="fractional base"),
        pytest.param({"base": "7"}, id="string base"),
        pytest.param({"base": True}, id="boolean base"),
        pytest.param({"base": 1, "extra": 2}, id="unknown key"),
        pytest.param({"base": 1, "add": [{"when": "a", "credits": -2}]}, id="negative credits"),
        pytest.param({"base": 1, "add": [{"when": [], "credits": 2}]}, id="no when paths"),
        pytest.param({"base": 1, "add": [{"when": "", "credits": 2}]}, id="empty when path"),
        pytest.param({"base": 1, "add": [{"when": ".a", "credits": 2}]}, id="leading dot"),
        pytest.param({"base": 1, "add": [{"when": "a.", "credits": 2}]}, id="trailing dot"),
        pytest.param(
            {"base": 1, "add": [{"per": "p", "credits": 2, "free": 5, "max": 3}]},
            id="max below free",
        ),
        pytest.param(
            {"base": 1, "add": [{"per": "p", "credits": 2, "min": 4, "max": 3}]},
            id="max below min",
        ),
        pytest.param({"base": 1, "add": [{"per": "p", "credits": 2, "max": 0}]}, id="max 0"),
        pytest.param({"base": 1, "add": [{"per": "p", "credits": 2}]}, id="max missing"),
    ],
)
def test_invalid_prices_are_rejected(fields: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Price.model_validate(fields)


def test_prices_are_immutable() -> None:
    with pytest.raises(ValidationError):
        CHATGPT.base = 0


# --------------------------------------------------------------------------- properties

# Field pools chosen so that no path is a prefix of another: any assignment of values to them
# builds one consistent JSON document. Flag and per fields are disjoint.
FLAG_PATHS = ("flag", "include.rawResponse", "include.ads", "include.shopping", "opts.deep.on")
PER_FIELDS = ("pages", "opts.count", "depth", "n")

ABSENT = object()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)

flag_rules = st.builds(
    FlagRule,
    when=st.lists(st.sampled_from(FLAG_PATHS), min_size=1, max_size=3, unique=True).map(tuple),
    credits=st.integers(0, 50),
)


@st.composite
def per_rules(draw: st.DrawFn, field: str) -> PerRule:
    low = draw(st.integers(0, 3))
    free = draw(st.integers(0, 12))
    high = draw(st.integers(max(1, low, free), max(1, low, free) + 15))
    return PerRule(per=field, credits=draw(st.integers(0, 50)), free=free, min=low, max=high)


@st.composite
def prices(draw: st.DrawFn, per_fields: st.SearchStrategy[list[str]] | None = None) -> Price:
    if per_fields is None:
        per_fields = st.lists(st.sampled_from(PER_FIELDS), max_size=3, unique=True)
    fields = draw(per_fields)
    rules: list[FlagRule | PerRule] = draw(st.lists(flag_rules, max_size=4))
    rules += [draw(per_rules(field)) for field in fields]
    return Price(base=draw(st.integers(0, 1000)), add=tuple(draw(st.permutations(rules))))


@st.composite
def per_values(draw: st.DrawFn, price: Price) -> dict[str, Any]:
    """A valid value (or null, or nothing) for every per field of the price."""
    return {
        rule.per: draw(st.just(ABSENT) | st.none() | st.integers(rule.min, rule.max))
        for rule in price.add
        if isinstance(rule, PerRule)
    }


@st.composite
def flag_values(draw: st.DrawFn) -> dict[str, Any]:
    """Nothing, or any JSON value, at every flag path."""
    return {path: draw(st.just(ABSENT) | json_values) for path in FLAG_PATHS}


def build_document(values: dict[str, Any]) -> dict[str, Any]:
    document: dict[str, Any] = {"prompt": "unpriced noise"}
    for path, value in values.items():
        if value is ABSENT:
            continue
        *parents, leaf = path.split(".")
        node = document
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return document


def expected_credits(price: Price, values: dict[str, Any]) -> int:
    """The spec's rule, written out from the values the test chose (no JSON lookups)."""
    total = price.base
    for rule in price.add:
        if isinstance(rule, FlagRule):
            chosen = [values[path] for path in rule.when]
            if any(value is not ABSENT and bool(value) for value in chosen):
                total += rule.credits
        else:
            units = values[rule.per]
            if isinstance(units, int):
                total += rule.credits * max(0, units - rule.free)
    return total


@given(data=st.data())
def test_price_is_base_plus_every_matching_rule(data: st.DataObject) -> None:
    price = data.draw(prices())
    values = {**data.draw(flag_values()), **data.draw(per_values(price))}
    credits = price_of(price, body(build_document(values)))
    assert credits == expected_credits(price, values)
    assert credits >= price.base >= 0


@given(price=prices(), raw=st.binary(max_size=64))
def test_arbitrary_bytes_price_at_least_base_or_fail_validation(price: Price, raw: bytes) -> None:
    try:
        credits = price_of(price, raw)
    except ValidationFailed:
        assert price.reads_body
    else:
        assert credits >= price.base >= 0


@given(base=st.integers(0, 10**6), raw=st.binary(max_size=64))
def test_a_price_without_rules_is_its_base_for_any_body(base: int, raw: bytes) -> None:
    assert price_of(Price(base=base), raw) == base


@given(data=st.data())
def test_price_is_monotone_in_the_page_count(data: st.DataObject) -> None:
    price = data.draw(prices(per_fields=st.just(["pages"])))
    pages = next(rule for rule in price.add if isinstance(rule, PerRule))
    values = data.draw(flag_values())
    by_pages = [
        price_of(price, body(build_document({**values, "pages": count})))
        for count in range(pages.min, pages.max + 1)
    ]
    assert by_pages == sorted(by_pages)
    steps = {later - earlier for earlier, later in pairwise(by_pages)}
    assert steps <= {0, pages.credits}
