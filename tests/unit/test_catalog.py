"""The catalog (SPEC section 2): loading and validating it, and matching requests to routes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.catalog.live import Snapshot
from gateway.catalog.load import load_catalog, parse_catalog
from gateway.catalog.models import Catalog, WebhookOptions
from gateway.errors import CatalogInvalid, MethodNotAllowed, NotFound

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "config" / "gateway.yaml"
BAD = ROOT / "tests" / "data" / "bad"

MONITOR_ROUTES = [
    "/v1/monitor/chatgpt",
    "/v1/monitor/gemini",
    "/v1/monitor/perplexity",
    "/v1/monitor/copilot",
    "/v1/monitor/grok",
    "/v1/monitor/aimode",
    "/v1/monitor/google",
    "/v1/monitor/google/news",
]

HEADER = b"""
upstreams:
  s: {url: "http://127.0.0.1:9000"}
plans:
  lite: {price_cents: 3000, credits: 37500, concurrency: 10, rate_limit_rps: 500}
"""


def catalog_with_routes(routes: str) -> Catalog:
    return parse_catalog(HEADER + b"routes:\n" + routes.encode())


def problems_of(raw: bytes) -> list[str]:
    with pytest.raises(CatalogInvalid) as caught:
        parse_catalog(raw)
    return caught.value.problems


def split(problem: str) -> tuple[str, str]:
    location, separator, message = problem.partition(": ")
    assert separator, f"not a `location: message` line: {problem!r}"
    return location, message


# --------------------------------------------------------------------------- the shipped catalog


@pytest.fixture(scope="module")
def shipped() -> Catalog:
    return load_catalog(SHIPPED)


def test_the_shipped_catalog_lists_the_metered_monitor_routes(shipped: Catalog) -> None:
    routes = {route.path: route for route in shipped.routes}
    for path in MONITOR_ROUTES:
        assert path in routes, path
        assert routes[path].methods == ("POST",)
        assert routes[path].price is not None, f"{path} must be metered"
        assert routes[path].upstream in shipped.upstreams


@pytest.mark.parametrize("path", ["/v1/countries", "/v1/states"])
def test_the_shipped_catalog_lists_unmetered_lookup_routes(shipped: Catalog, path: str) -> None:
    route = Snapshot(shipped).match(path, "GET")
    assert route.path == path
    assert route.price is None


def test_the_shipped_catalog_has_public_plans(shipped: Catalog) -> None:
    assert len(shipped.plans) >= 2
    for plan in shipped.plans.values():
        assert plan.credits > 0
        assert plan.concurrency >= 1


def test_the_shipped_catalog_gives_upgrades_the_full_credits(shipped: Catalog) -> None:
    assert shipped.billing.upgrade_credits == "full"


def test_the_shipped_chatgpt_price_includes_the_sync_surcharge(shipped: Catalog) -> None:
    price = Snapshot(shipped).match("/v1/monitor/chatgpt", "POST").price
    assert price is not None
    assert price.base == 7


def test_the_shipped_catalog_maps_every_cloro_task_type(shipped: Catalog) -> None:
    options = shipped.async_
    assert options is not None
    assert options.task_types == {
        "CHATGPT": "/v1/monitor/chatgpt",
        "GEMINI": "/v1/monitor/gemini",
        "PERPLEXITY": "/v1/monitor/perplexity",
        "COPILOT": "/v1/monitor/copilot",
        "GROK": "/v1/monitor/grok",
        "AIMODE": "/v1/monitor/aimode",
        "GOOGLE": "/v1/monitor/google",
        "GOOGLE_NEWS": "/v1/monitor/google/news",
    }
    assert options.sync_surcharge == 2 and options.max_batch == 500
    assert options.webhooks.header_prefix == "X-Cloro-"
    assert options.webhooks.allow_private_targets is False
    for task_type in options.task_types:
        route = shipped.task_route(task_type)
        assert route is not None and route.price is not None and "POST" in route.methods
    assert shipped.task_route("NOPE") is None
    assert shipped.limits.max_queue_wait_s == 60 and shipped.limits.max_waiting_per_org == 100


def test_all_async_problems_are_listed_together() -> None:
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(BAD / "async_task_type_route.yaml")
    assert caught.value.problems == [
        f"async.task_types.{name}: {path!r} is not the path of a metered POST route"
        for name, path in (
            ("COUNTRIES", "/v1/countries"),
            ("FREE", "/v1/free"),
            ("GONE", "/v1/gone"),
        )
    ]


def test_the_version_is_a_digest_of_the_bytes(shipped: Catalog) -> None:
    raw = SHIPPED.read_bytes()
    assert shipped.version
    assert parse_catalog(raw).version == shipped.version
    assert parse_catalog(raw + b"\n# a comment changes the bytes\n").version != shipped.version


# --------------------------------------------------------------------------- invalid catalogs


BAD_FILES = [
    pytest.param("unknown_top_level_key.yaml", "ratelimits", "unknown key", id="top key"),
    pytest.param("unknown_route_key.yaml", "routes[0].timeout", "unknown key", id="route key"),
    pytest.param(
        "unknown_upstream.yaml", "routes[1].upstream", "unknown upstream 'scraper'", id="ups"
    ),
    pytest.param(
        "duplicate_route.yaml",
        "routes[1]",
        "duplicate route POST /v1/monitor/chatgpt",
        id="duplicate",
    ),
    pytest.param(
        "negative_base.yaml", "routes[0].price.base", "greater than or equal to 0", id="base"
    ),
    pytest.param(
        "max_below_free.yaml",
        "routes[0].price.add[0]",
        "max must not be below free",
        id="max<free",
    ),
    pytest.param(
        "non_integer_credits.yaml",
        "routes[0].price.add[0].credits",
        "valid integer",
        id="credits",
    ),
    pytest.param(
        "bad_upstream_url.yaml", "upstreams.scrapers.url", "http:// or https://", id="url"
    ),
    pytest.param(
        "path_and_prefix.yaml",
        "routes[0]",
        "exactly one of path or path_prefix",
        id="path+prefix",
    ),
    pytest.param("not_yaml.yaml", f"{BAD / 'not_yaml.yaml'}:4", "invalid YAML", id="yaml"),
    pytest.param(
        "unknown_upgrade_credits.yaml",
        "billing.upgrade_credits",
        "'full' or 'prorated'",
        id="upgrade credits",
    ),
    pytest.param(
        "infinite_timeout.yaml", "upstreams.scrapers.timeout_s", "finite number", id="inf"
    ),
    pytest.param(
        "nan_connect_timeout.yaml",
        "upstreams.scrapers.connect_timeout_s",
        "finite number",
        id="nan",
    ),
    pytest.param(
        "huge_timeout.yaml", "upstreams.scrapers.timeout_s", "less than or equal to", id="huge"
    ),
    pytest.param("empty_sections.yaml", "routes", "at least one", id="empty sections"),
    pytest.param("empty_mapping.yaml", "upstreams", "required", id="empty"),
    pytest.param(
        "zero_change_cap.yaml",
        "limits.max_subscription_changes_per_hour",
        "greater than or equal to 1",
        id="change cap",
    ),
    pytest.param(
        "negative_backoff.yaml",
        "async.webhooks.backoff_s[1]",
        "greater than 0",
        id="negative backoff",
    ),
    pytest.param(
        "infinite_backoff.yaml",
        "async.webhooks.backoff_s[0]",
        "finite number",
        id="infinite backoff",
    ),
    pytest.param(
        "async_task_type_route.yaml",
        "async.task_types.COUNTRIES",
        "not the path of a metered POST route",
        id="task type route",
    ),
    pytest.param(
        "async_short_backoff.yaml",
        "async.webhooks",
        "backoff_s must list a wait before each of attempts 2..4",
        id="backoff",
    ),
    pytest.param("async_unknown_key.yaml", "async.retries", "unknown key", id="async key"),
    pytest.param(
        "negative_queue_wait.yaml",
        "limits.max_queue_wait_s",
        "greater than or equal to 0",
        id="queue wait",
    ),
]


@pytest.mark.parametrize(("filename", "location", "words"), BAD_FILES)
def test_an_invalid_catalog_names_the_problem(filename: str, location: str, words: str) -> None:
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(BAD / filename)
    problems = [split(problem) for problem in caught.value.problems]
    assert any(where == location and words in message for where, message in problems), (
        caught.value.problems
    )


def test_a_bad_rule_is_reported_once_against_its_own_shape() -> None:
    # A `per` rule's mistake must not also be reported as a malformed `when` rule.
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(BAD / "max_below_free.yaml")
    assert caught.value.problems == ["routes[0].price.add[0]: max must not be below free"]


def test_a_catalog_needs_an_upstream_a_route_and_a_plan() -> None:
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(BAD / "empty_sections.yaml")
    assert [split(problem)[0] for problem in caught.value.problems] == [
        "upstreams",
        "routes",
        "plans",
    ]


def test_every_bad_file_is_covered() -> None:
    assert {path.name for path in BAD.glob("*.yaml")} == {case.values[0] for case in BAD_FILES}


def test_every_problem_is_listed_not_just_the_first() -> None:
    raw = HEADER.replace(b'"http://127.0.0.1:9000"', b'"ftp://x"') + (
        b"routes:\n"
        b"  - {path: /a, upstream: nowhere}\n"
        b"  - {path: /b, upstream: s, price: {base: -3}}\n"
        b"  - {path: b, upstream: s}\n"
    )
    locations = [split(problem)[0] for problem in problems_of(raw)]
    assert "upstreams.s.url" in locations
    assert "routes[1].price.base" in locations
    assert "routes[2]" in locations
    # The cross-check (unknown upstream) runs only once every field is valid.
    fixed = raw.replace(b'"ftp://x"', b'"http://x"').replace(b"-3", b"3")
    assert problems_of(fixed.replace(b"path: b", b"path: /b2")) == [
        "routes[0].upstream: unknown upstream 'nowhere'"
    ]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(b"", "catalog: the catalog must be a mapping", id="empty"),
        pytest.param(b"just a string", "catalog: the catalog must be a mapping", id="scalar"),
        pytest.param(b"- routes\n- plans\n", "catalog: the catalog must be a mapping", id="list"),
    ],
)
def test_a_catalog_must_be_a_mapping(raw: bytes, expected: str) -> None:
    assert problems_of(raw) == [expected]


@pytest.mark.parametrize(
    ("route", "location", "words"),
    [
        pytest.param("{path: v1/a, upstream: s}", "routes[0]", "must start with /", id="no slash"),
        pytest.param("{upstream: s}", "routes[0]", "exactly one of", id="neither"),
        pytest.param("{path: /a, methods: [], upstream: s}", "routes[0].methods", "at least one"),
        pytest.param("{path: /a, methods: [FETCH], upstream: s}", "routes[0].methods", "FETCH"),
        pytest.param("{path: /a}", "routes[0].upstream", "required", id="no upstream"),
    ],
)
def test_route_problems(route: str, location: str, words: str) -> None:
    problems = problems_of(HEADER + b"routes:\n  - " + route.encode() + b"\n")
    assert any(split(p)[0] == location and words in split(p)[1] for p in problems), problems


def test_the_same_path_as_exact_and_as_prefix_is_not_a_duplicate() -> None:
    catalog = catalog_with_routes(
        "  - {path: /v1/files, methods: [GET], upstream: s}\n"
        "  - {path_prefix: /v1/files, methods: [GET], upstream: s}\n"
    )
    assert len(catalog.routes) == 2


def test_methods_are_normalised_to_upper_case() -> None:
    catalog = catalog_with_routes("  - {path: /a, methods: [get, Post], upstream: s}\n")
    assert catalog.routes[0].methods == ("GET", "POST")


def test_a_missing_file_is_reported() -> None:
    missing = BAD / "no-such-file.yaml"
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(missing)
    [problem] = caught.value.problems
    assert problem.startswith(f"{missing}: cannot read")


def test_upgrade_credits_default_to_full_and_may_be_prorated() -> None:
    routes = b"routes: [{path: /a, upstream: s}]\n"
    assert parse_catalog(HEADER + routes).billing.upgrade_credits == "full"
    prorated = parse_catalog(HEADER + routes + b"billing: {upgrade_credits: prorated}\n")
    assert prorated.billing.upgrade_credits == "prorated"
    assert problems_of(HEADER + routes + b"billing: {grace_days: 3}\n") == [
        "billing.grace_days: unknown key"
    ]


def test_webhook_options_default_to_the_spec_and_read_the_async_block() -> None:
    catalog = catalog_with_routes("  - {path: /a, upstream: s}\n")
    assert catalog.async_ is None
    options = parse_catalog(
        HEADER
        + b"routes:\n  - {path: /a, methods: [POST], upstream: s, price: {base: 3}}\n"
        + b"async:\n  task_types: {A: /a}\n"
        + b"  webhooks: {header_prefix: X-Acme-, attempts: 2, backoff_s: [0.5]}\n"
    ).async_
    assert options is not None
    assert options.webhooks.header_prefix == "X-Acme-"
    assert options.webhooks.backoff_s == (0.5,)
    defaults = options.model_copy(update={"webhooks": WebhookOptions()}).webhooks
    assert (defaults.header_prefix, defaults.attempts, defaults.timeout_s) == ("X-Cloro-", 5, 10)
    assert defaults.backoff_s == (120, 240, 480, 960)
    assert defaults.allow_private_targets is False


def test_version_is_not_a_catalog_key() -> None:
    routes = b"routes: [{path: /a, upstream: s}]\n"
    assert problems_of(HEADER + routes + b"version: v2\n") == ["version: unknown key"]


# --------------------------------------------------------------------------- check-config


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check-config", str(path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )


def test_check_config_accepts_the_shipped_catalog() -> None:
    result = check_config(SHIPPED)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith(f"{SHIPPED}: ok")


def test_check_config_prints_one_line_per_problem(tmp_path: Path) -> None:
    bad = tmp_path / "gateway.yaml"
    bad.write_bytes(
        HEADER
        + b"routes:\n"
        + b"  - {path: /a, upstream: nowhere, colour: red}\n"
        + b"  - {path: /b, upstream: s, price: {base: -1}}\n"
    )
    result = check_config(bad)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        "routes[0].colour: unknown key",
        "routes[1].price.base: Input should be greater than or equal to 0",
    ]


@pytest.mark.parametrize("filename", ["unknown_upstream.yaml", "not_yaml.yaml"])
def test_check_config_rejects_a_bad_file(filename: str) -> None:
    result = check_config(BAD / filename)
    assert result.returncode == 1
    with pytest.raises(CatalogInvalid) as caught:
        load_catalog(BAD / filename)
    assert result.stdout.splitlines() == caught.value.problems


# --------------------------------------------------------------------------- route matching

ROUTES = """
  - {path: /v1/monitor/chatgpt, methods: [POST], upstream: s}
  - {path: /v1/countries, methods: [GET, HEAD], upstream: s}
  - {path_prefix: /v1/files, methods: [GET], upstream: s}
  - {path_prefix: /v1/files/private, methods: [GET, DELETE], upstream: s}
"""


@pytest.fixture(params=["as written", "reversed"])
def snapshot(request: pytest.FixtureRequest) -> Snapshot:
    """The same routes in both orders: the result must not depend on catalog order."""
    lines = [line for line in ROUTES.splitlines() if line.strip()]
    if request.param == "reversed":
        lines.reverse()
    return Snapshot(catalog_with_routes("\n".join(lines) + "\n"))


def test_an_exact_path_matches_itself(snapshot: Snapshot) -> None:
    assert snapshot.match("/v1/monitor/chatgpt", "POST").path == "/v1/monitor/chatgpt"
    assert snapshot.match("/v1/countries", "HEAD").path == "/v1/countries"


@pytest.mark.parametrize(
    "path", ["/v1/monitor/chatgpt/", "/v1/monitor/chatgpt/x", "/v1/monitor", "/v1/monitor/chat"]
)
def test_an_exact_path_matches_nothing_else(snapshot: Snapshot, path: str) -> None:
    with pytest.raises(NotFound):
        snapshot.match(path, "POST")


@pytest.mark.parametrize("path", ["/v1/files", "/v1/files/", "/v1/files/a", "/v1/files/a/b"])
def test_a_prefix_matches_its_whole_subtree(snapshot: Snapshot, path: str) -> None:
    assert snapshot.match(path, "GET").name == "/v1/files*"


@pytest.mark.parametrize("path", ["/v1/filesx", "/v1/files.json", "/v1/file", "/v1"])
def test_a_prefix_matches_whole_segments_only(snapshot: Snapshot, path: str) -> None:
    with pytest.raises(NotFound):
        snapshot.match(path, "GET")


@pytest.mark.parametrize(
    ("path", "name"),
    [
        ("/v1/files/private", "/v1/files/private*"),
        ("/v1/files/private/a/b", "/v1/files/private*"),
        ("/v1/files/privatex", "/v1/files*"),
        ("/v1/files/public/private", "/v1/files*"),
    ],
)
def test_the_longest_prefix_wins(snapshot: Snapshot, path: str, name: str) -> None:
    assert snapshot.match(path, "GET").name == name


@pytest.mark.parametrize("path", ["/", "/v2/monitor/chatgpt", "/V1/COUNTRIES", "/admin"])
def test_an_unknown_path_is_not_found(snapshot: Snapshot, path: str) -> None:
    with pytest.raises(NotFound) as caught:
        snapshot.match(path, "GET")
    assert caught.value.status == 404
    assert caught.value.code == "RESOURCE_NOT_FOUND"


@pytest.mark.parametrize(
    ("path", "method", "allow"),
    [
        ("/v1/monitor/chatgpt", "GET", "POST"),
        ("/v1/countries", "POST", "GET, HEAD"),
        ("/v1/files/a", "DELETE", "GET"),
        ("/v1/files/private/a", "PUT", "DELETE, GET"),
    ],
)
def test_a_known_path_with_the_wrong_method_lists_the_allowed_ones(
    snapshot: Snapshot, path: str, method: str, allow: str
) -> None:
    with pytest.raises(MethodNotAllowed) as caught:
        snapshot.match(path, method)
    assert caught.value.status == 405
    assert caught.value.headers == {"Allow": allow}
    assert caught.value.details == {"allowed": allow.split(", ")}


def test_an_allowed_method_on_the_longer_prefix(snapshot: Snapshot) -> None:
    route = snapshot.match("/v1/files/private/report.pdf", "DELETE")
    assert route.path_prefix == "/v1/files/private"
