"""Read a catalog file and turn every problem into a `location: message` line."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from gateway.catalog.models import Catalog
from gateway.errors import CatalogInvalid


def load_catalog(path: str | Path) -> Catalog:
    """Parse and validate the whole file; raise CatalogInvalid listing every problem."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogInvalid([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    return parse_catalog(raw, source=str(path))


def parse_catalog(raw: bytes, *, source: str = "catalog") -> Catalog:
    """Validate catalog YAML bytes; the version is a digest of the bytes."""
    try:
        data: Any = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise CatalogInvalid([f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}"]) from exc
    if not isinstance(data, dict):
        raise CatalogInvalid([f"{source}: the catalog must be a mapping"])
    if "version" in data:  # the version is the file's digest, never written by hand
        raise CatalogInvalid(["version: unknown key"])
    data = {**data, "version": hashlib.sha256(raw).hexdigest()[:12]}
    try:
        return Catalog.model_validate(data)
    except ValidationError as exc:
        raise CatalogInvalid(_problems(exc)) from exc


def _problems(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        location = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            message = "unknown key"
        if not location:
            lines.extend(message.splitlines())
        else:
            lines.extend(f"{location}: {line}" for line in message.splitlines())
    return lines


def _location(loc: tuple[int | str, ...]) -> str:
    text = ""
    for index, part in enumerate(loc):
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("function-") or (index >= 2 and loc[index - 2] == "add"):
            # pydantic names the validator it ran, or the rule's tag (`when`/`per`) right after
            # the rule's index; the user wrote neither.
            continue
        else:
            text += f".{part}" if text else part
    return text
