"""Lua scripts: read from lua/*.lua once at import, identified by their SHA1."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from redis.exceptions import NoScriptError


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua file, run by SHA; the body is sent only to a server that answers NOSCRIPT."""

    name: str
    body: str = field(repr=False)
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.body.encode()).hexdigest())

    async def run(self, client: Any, keys: list[str], args: list[str | int]) -> Any:
        """One unbatched call (admin paths); the hot path goes through the ScriptBatcher."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await client.eval(self.body, len(keys), *keys, *args)


def _load(name: str, *chunks: str) -> Script:
    """The script `name`, after the shared chunks it uses (Lua has no `require` in Redis:
    the chunks' local functions are prepended, so one definition serves several scripts)."""
    lua = resources.files("gateway.store").joinpath("lua")
    body = "".join(lua.joinpath(f"{part}.lua").read_text() for part in (*chunks, name))
    return Script(name, body)


ADMIT = _load("admit", "lease")
SETTLE = _load("settle", "settlement")
APPLY = _load("apply")
RATE = _load("rate")
OUTBOX_CLAIM = _load("outbox_claim")
OUTBOX_ACK = _load("outbox_ack")
OUTBOX_FAIL = _load("outbox_fail")
# The queues (SPEC 10).
ENQUEUE = _load("enqueue")
DISPATCH = _load("dispatch", "lease", "tasks")
FINISH = _load("finish", "settlement", "tasks")
CANCEL = _load("cancel", "tasks")
SWEEP = _load("sweep", "tasks")
LEAVE = _load("leave")
