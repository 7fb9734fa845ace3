"""requirements.lock pins what runs, with hashes; the image and `make run` install only that."""

from __future__ import annotations

import re
import subprocess
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
# The platform `make lock` resolves for: the image's (CPython 3.11 on Linux x86_64).
TARGET = {
    "python_version": "3.11",
    "python_full_version": "3.11.0",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


@dataclass(frozen=True)
class Pin:
    version: Version
    hashes: tuple[str, ...]


def _lock() -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    for line in LOCK.read_text().replace("\\\n", " ").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        spec, *options = line.split(" --")
        requirement = Requirement(spec)
        (pinned,) = requirement.specifier
        assert pinned.operator == "==", line
        hashes = tuple(o.strip().removeprefix("hash=") for o in options if o.startswith("hash="))
        pins[canonicalize_name(requirement.name)] = Pin(Version(pinned.version), hashes)
    return pins


def _applies(requirement: Requirement, extras: set[str]) -> bool:
    marker = requirement.marker
    return marker is None or any(marker.evaluate({**TARGET, "extra": e}) for e in extras | {""})


def _closure(roots: list[Requirement]) -> list[Requirement]:
    """Every requirement reached from roots on the target platform, from installed metadata."""
    reached: list[Requirement] = []
    pending = [r for r in roots if _applies(r, set())]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        requirement = pending.pop()
        reached.append(requirement)
        key = (canonicalize_name(requirement.name), frozenset(requirement.extras))
        if key in expanded:
            continue
        expanded.add(key)
        for line in metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            if _applies(dependency, set(requirement.extras)):
                pending.append(dependency)
    return reached


def test_the_lock_pins_every_runtime_and_build_dependency_with_hashes() -> None:
    pins = _lock()
    assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for p in pins.values() for h in p.hashes)
    assert all(pin.hashes for pin in pins.values()), [n for n, p in pins.items() if not p.hashes]
    runtime = _closure([Requirement(r) for r in PYPROJECT["project"]["dependencies"]])
    # `--no-build-isolation` builds the package with the locked backend, so it is pinned too.
    build = [Requirement(r) for r in PYPROJECT["build-system"]["requires"]]
    names = {canonicalize_name(r.name) for r in runtime}
    # The markers and extras were followed: uvloop on Linux, hiredis and lupa through extras.
    assert {"uvloop", "hiredis", "lupa", "multidict", "pydantic-core"} <= names
    for requirement in [*runtime, *build]:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in requirements.lock: run `make lock`"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{name} {pins[name].version} does not satisfy {requirement}: run `make lock`"
        )


def _dry_run(target: str) -> str:
    """The commands `make target` runs on a fresh clone (-B: nothing is built yet)."""
    return subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", target],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_make_run_installs_the_lock_and_needs_no_root() -> None:
    commands = _dry_run("run")
    assert "apt-get" not in commands and "sudo" not in commands
    assert "-m venv --upgrade-deps .venv" in commands  # pip and setuptools of today
    assert "pip install --quiet --require-hashes -r requirements.lock" in commands
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in commands
    assert "[test]" not in commands
    assert commands.rstrip().endswith(".venv/bin/gateway demo")


def test_make_test_adds_the_test_tools_and_the_system_packages() -> None:
    commands = _dry_run("test")
    assert "--require-hashes -r requirements.lock" in commands
    assert "-e '.[test]'" in commands
    assert "apt-get install -y -qq redis-server" in commands
    assert "apt-get install -y -qq chromium" in commands


def test_the_image_installs_only_what_the_lock_pins() -> None:
    parser = DockerfileParser(path=str(ROOT / "deploy" / "Dockerfile"))
    steps = [(i["instruction"], i["value"]) for i in parser.structure]
    installs = [
        (index, command)
        for index, (name, value) in enumerate(steps)
        if name == "RUN"
        for command in re.split(r"&&|;", value)
        if "pip install" in command
    ]
    from_lock = [i for i, c in installs if "--require-hashes" in c and "-r requirements.lock" in c]
    assert from_lock, installs
    copied = next(i for i, (n, v) in enumerate(steps) if n == "COPY" and "requirements.lock" in v)
    assert copied < from_lock[0]
    for index, command in installs:
        if index not in from_lock:
            # The package alone, after the lock: nothing resolved, no unhashed build backend.
            assert "--no-deps" in command and "--no-build-isolation" in command, command
            assert index > from_lock[0], command
