"""Lua scripts: read from lua/*.lua once at import, identified by their SHA1."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua file, run by SHA; the body is sent only to a server that answers NOSCRIPT."""

    name: str
    body: str = field(repr=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())


def _load(name: str) -> Script:
    return Script(name, resources.files("gateway.store").joinpath(f"lua/{name}.lua").read_text())


ADMIT = _load("admit")
SETTLE = _load("settle")
