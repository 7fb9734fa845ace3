"""The hot path's scripts on a Redis Cluster: one pipelined connection per master.

redis-py refuses EVALSHA in Cluster pipelines, so through it every call takes a pooled
connection and a round trip of its own. Here each call goes to the master of its first key's
slot (all keys of a call share the account's hash tag), through that master's ScriptBatcher
(store/batcher.py): the calls of one loop tick for one master leave in one write, as on a
plain server.

The slot map is read with CLUSTER SLOTS from the first node that answers. A MOVED reply sends
the call on to the node it names, which then serves the slot, and the map is read again in
the background; an ASK reply (a slot half migrated) sends it there once, after ASKING. A
connection that fails fails its calls as store errors (the ledger fails closed, settles are
spooled), the map is read again in case a replica took over, and the next call reconnects.
Redirections are followed within the call's one deadline.

Over TLS (rediss://) the calls go through redis-py one by one, as before: the pipe speaks plain
TCP only."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from redis.asyncio.connection import Connection
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import RedisClusterException, RedisError, ResponseError

from gateway.store.batcher import ScriptBatcher
from gateway.store.resp import one_command
from gateway.store.scripts import Script

log = logging.getLogger(__name__)

MAX_REDIRECTIONS = 5
# However many calls ask for it, the map is read again at most this often in the background.
_REFRESH_PAUSE_S = 0.2


class ClusterScripts:
    """run() and aclose() as a ScriptBatcher's, for a Cluster client."""

    def __init__(self, client: Any, timeout_s: float, *, scripts: tuple[Script, ...]) -> None:
        self._client = client
        self._timeout_s = timeout_s
        self._scripts = scripts
        given = client.connection_kwargs
        self._auth = {k: given[k] for k in ("username", "password") if given.get(k)}
        self._piped = given.get("connection_class", Connection) is Connection
        self._seeds = [f"{node.host}:{node.port}" for node in client.startup_nodes]
        self._slots: list[str] = []  # the master of each slot, "host:port"; "" for none
        self._masters: dict[str, ScriptBatcher] = {}
        self._refreshing: asyncio.Task[None] | None = None
        self._refreshed_at = float("-inf")
        self._map_error: Exception | None = None

    async def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        if not self._piped:
            async with asyncio.timeout(self._timeout_s):
                return await script.run(self._client, keys, args)
        started = asyncio.get_running_loop().time()
        slot = key_slot(keys[0].encode())
        if self._slots:
            try:  # the hot path: no timer of its own, the batch carries the deadline
                return await self._send(self._slots[slot], script, keys, args)
            except ResponseError as exc:
                redirection = _redirection(exc)
                if redirection is None:
                    raise
        else:
            redirection = None
        async with asyncio.timeout_at(started + self._timeout_s):
            return await self._follow(slot, redirection, script, keys, args)

    async def _follow(
        self,
        slot: int,
        redirection: tuple[str, str] | None,
        script: Script,
        keys: list[str],
        args: list[str | int],
    ) -> Any:
        """The slow path: read the map first, or follow MOVED and ASK replies."""
        if not self._slots:
            await asyncio.shield(self._refresh_soon(pause=False))  # others may wait on it too
            if not self._slots:
                raise RedisClusterException(f"no slot map: {self._map_error}")
        for _ in range(MAX_REDIRECTIONS):
            asking = False
            if redirection is None:
                node = self._slots[slot]
            else:
                kind, node = redirection
                asking = kind == "ASK"
                if not asking:  # the slot has moved for good: tell every later call
                    self._slots[slot] = node
                    self._refresh_soon()
            try:
                return await self._send(node, script, keys, args, asking=asking)
            except ResponseError as exc:
                redirection = _redirection(exc)
                if redirection is None:
                    raise
        raise RedisClusterException(f"slot {slot}: more than {MAX_REDIRECTIONS} redirections")

    async def _send(
        self,
        node: str,
        script: Script,
        keys: list[str],
        args: list[str | int],
        *,
        asking: bool = False,
    ) -> Any:
        if not node:
            raise RedisClusterException(f"no master serves the slot of {keys[0]}")
        try:
            return await self._master(node).run(script, keys, args, asking=asking)
        except ResponseError:
            raise
        except (RedisError, OSError, TimeoutError):
            self._refresh_soon()  # a failover moves the slots to a node we do not know yet
            raise

    def _master(self, node: str) -> ScriptBatcher:
        batcher = self._masters.get(node)
        if batcher is None:
            batcher = self._masters[node] = ScriptBatcher(
                self._client,
                self._timeout_s,
                scripts=self._scripts,
                connection=self._connection(node),
            )
        return batcher

    def _connection(self, node: str) -> dict[str, Any]:
        host, port = node.rsplit(":", 1)
        return {"host": host, "port": int(port), **self._auth}

    def _refresh_soon(self, *, pause: bool = True) -> asyncio.Task[None]:
        """The map read under way, or a new one (unless one ended less than a pause ago)."""
        now = asyncio.get_running_loop().time()
        running = self._refreshing is not None and not self._refreshing.done()
        if not running and (not pause or now - self._refreshed_at >= _REFRESH_PAUSE_S):
            self._refreshing = asyncio.create_task(self._refresh())
        assert self._refreshing is not None
        return self._refreshing

    async def _refresh(self) -> None:
        """Read the map from the first node that answers: the masters known, then the URL's
        node, then the nodes redis-py has seen."""
        known = [*self._slots, *self._seeds, *(n.name for n in self._client.get_nodes())]
        try:
            for node in dict.fromkeys(known):
                if not node:
                    continue
                try:
                    reply = await one_command(
                        self._connection(node), self._timeout_s, ("CLUSTER", "SLOTS")
                    )
                except (RedisError, OSError, TimeoutError) as exc:
                    self._map_error = exc
                    continue
                self._slots = _slot_map(reply, node.rsplit(":", 1)[0])
                return
        except Exception as exc:  # a bug must not leave an unretrieved task behind
            log.exception("reading the Cluster's slot map failed")
            self._map_error = exc
        finally:
            self._refreshed_at = asyncio.get_running_loop().time()

    async def aclose(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.gather(self._refreshing, return_exceptions=True)
        for batcher in self._masters.values():
            await batcher.aclose()


def _slot_map(reply: list[Any], asked_host: str) -> list[str]:
    """CLUSTER SLOTS: [start, end, [host, port, ...] of the master, replicas...] per range."""
    slots = [""] * REDIS_CLUSTER_HASH_SLOTS
    for start, end, master, *_ in reply:
        host = master[0] if master[0] not in ("", "?") else asked_host  # an unknown endpoint
        slots[start : end + 1] = [f"{host}:{master[1]}"] * (end - start + 1)
    return slots


def _redirection(error: ResponseError) -> tuple[str, str] | None:
    """("MOVED" or "ASK", "host:port") of a redirection reply; None for any other error."""
    kind, _, rest = str(error).partition(" ")
    if kind not in ("MOVED", "ASK"):
        return None
    return kind, rest.rpartition(" ")[2]
