"""deploy/ checked without a cluster or a Docker engine: schemas, linters and cross-references."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser

from gateway.catalog.load import load_catalog, parse_catalog
from gateway.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S_VERSION = "1.30.0"
MANIFESTS = sorted((DEPLOY / "k8s").glob("*.yaml"))


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    located = shutil.which(name)
    assert located, f"{name} is missing: `make test` installs it"
    return located


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_kubernetes_manifests_validate_strictly(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def test_manifests_have_what_ops_need() -> None:
    kinds = {doc["kind"]: doc for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text())}
    assert set(kinds) == {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The drain (shutdown_grace_s) fits inside the pod's termination grace period.
    catalog = parse_catalog(kinds["ConfigMap"]["data"]["gateway.yaml"].encode())
    assert pod["terminationGracePeriodSeconds"] > catalog.limits.shutdown_grace_s
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == "gateway"
    ports = {p["targetPort"] for p in kinds["Service"]["spec"]["ports"]}
    assert ports == {"public"}  # the admin listener is not published


def test_compose_file_follows_the_compose_spec() -> None:
    result = subprocess.run(
        [
            _tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            str(DEPLOY / "compose.yaml"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    assert {"redis", "upstream", "gateway-1", "gateway-2", "prometheus"} <= set(services)


def _gateway_services(compose: dict[str, Any]) -> dict[str, Any]:
    return {n: s for n, s in compose["services"].items() if n.startswith("gateway-")}


def test_compose_takes_the_admin_token_from_an_env_file_git_ignores() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    gateways = _gateway_services(compose)
    assert len(gateways) == 2
    for service in gateways.values():
        assert "GATEWAY_ADMIN_TOKEN" not in service["environment"]
        assert service["env_file"] == ["gateway.env"]
    assert "change-me" not in "".join(p.read_text() for p in DEPLOY.rglob("*.y*ml"))
    # A real token written there cannot be committed by accident.
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", str(DEPLOY / "gateway.env")], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0


def test_compose_admin_port_is_on_loopback_and_the_monitoring_network_only() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    for service in _gateway_services(compose).values():
        admin = [p for p in service["ports"] if p.endswith(":9090")]
        assert admin and all(p.startswith("127.0.0.1:") for p in admin)
    # Prometheus, which scrapes the admin port, shares a network with the gateways only.
    scraper = set(services["prometheus"]["networks"])
    neighbours = {n for n, s in services.items() if scraper & set(s.get("networks", ["default"]))}
    assert neighbours == {"prometheus", *_gateway_services(compose)}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    assert "matchExpressions" not in selector  # not needed here, so not interpreted
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _covers(rule: dict[str, Any], name: str, number: int) -> bool:
    if "ports" not in rule:
        return True
    for entry in rule["ports"]:
        port = entry.get("port")
        if port is None or port == name:
            return True
        if isinstance(port, int) and port <= number <= entry.get("endPort", port):
            return True
    return False


def _allowed_sources(name: str) -> list[Any]:
    """The `from` of every ingress rule letting traffic reach the gateway's named port."""
    docs = [doc for p in MANIFESTS for doc in yaml.safe_load_all(p.read_text())]
    template = next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"]
    gateway = next(c for c in template["spec"]["containers"] if c["name"] == "gateway")
    number = next(p["containerPort"] for p in gateway["ports"] if p["name"] == name)
    policies = [
        d["spec"]
        for d in docs
        if d["kind"] == "NetworkPolicy"
        and "Ingress" in d["spec"].get("policyTypes", ["Ingress"])
        and _selects(d["spec"]["podSelector"], template["metadata"]["labels"])
    ]
    if not policies:
        return [None]  # no policy isolates the pods: open to every pod of the cluster
    rules = [rule for policy in policies for rule in policy.get("ingress", [])]
    return [rule.get("from") for rule in rules if _covers(rule, name, number)]


def test_admin_port_is_open_to_the_monitoring_namespace_only() -> None:
    namespace = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    monitoring = {"namespaceSelector": namespace}
    assert _allowed_sources("admin") == [[monitoring]]
    assert None in _allowed_sources("public")  # the gateway itself stays reachable


def test_prometheus_scrapes_both_gateways() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = [
        t for job in config["scrape_configs"] for s in job["static_configs"] for t in s["targets"]
    ]
    assert targets == ["gateway-1:9090", "gateway-2:9090"]


def test_compose_catalog_is_the_shipped_catalog_but_for_the_upstream() -> None:
    shipped = load_catalog(ROOT / "config" / "gateway.yaml")
    compose = load_catalog(DEPLOY / "compose-catalog.yaml")
    assert compose.upstreams["scrapers"].url == "http://upstream:9000"
    assert compose.routes == shipped.routes and compose.plans == shipped.plans


def test_yaml_is_lint_clean() -> None:
    config = "{extends: relaxed, rules: {line-length: {max: 120}}}"
    files = [*MANIFESTS, DEPLOY / "compose.yaml", DEPLOY / "prometheus.yml"]
    result = subprocess.run(
        [_tool("yamllint"), "-s", "-d", config, *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


def test_image_is_slim_non_root_with_a_healthcheck_and_a_real_entrypoint() -> None:
    parser = DockerfileParser(path=str(DEPLOY / "Dockerfile"))
    assert parser.baseimage.endswith("-slim")
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    users = [value for name, value in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert any(name == "HEALTHCHECK" for name, _ in instructions)
    entrypoint = json.loads(next(v for n, v in instructions if n == "ENTRYPOINT"))
    command = json.loads(next(v for n, v in instructions if n == "CMD"))
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint == ["gateway"] and "gateway" in scripts
    # The entrypoint exists and knows the image's command.
    help_text = subprocess.run(
        [_tool("gateway"), "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert command[0] in re.findall(r"\b(serve|demo|check-config)\b", help_text)
    # Every file the image copies is in the repository.
    for name, value in instructions:
        if name == "COPY" and not value.startswith("--from"):
            for source in value.split()[:-1]:
                assert (ROOT / source).exists(), source


def test_grafana_dashboard_uses_only_real_metrics() -> None:
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    known = {metric.name for metric in Metrics().registry.collect()}
    used: set[str] = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bgateway_[a-z_]+", target["expr"]))
    suffixes = ("_bucket", "_total", "_count", "_sum")
    stems = {next((u.removesuffix(s) for s in suffixes if u.endswith(s)), u) for u in used}
    assert stems <= known, stems - known
    assert len(dashboard["panels"]) >= 8
