"""API key authentication with a small in-process cache.

A key's identity (account, org, key id) never changes, so it is cached for a while; whether
the key is still active is checked by the admit script on every request, so revocation is
immediate and the cache costs no correctness."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from gateway.errors import InvalidApiKey, MissingApiKey
from gateway.store.accounts import KEY_PREFIX, hash_key
from gateway.store.ledger import Identity, Ledger

_KEY_LENGTH = len(KEY_PREFIX) + 32
_ALNUM = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class KeyCache:
    """Bearer key -> Identity, bounded LRU; unknown keys are remembered briefly too."""

    def __init__(
        self,
        ledger: Ledger,
        *,
        ttl_s: float,
        negative_ttl_s: float = 1.0,
        max_entries: int = 100_000,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ledger = ledger
        self._ttl_s = ttl_s
        self._negative_ttl_s = negative_ttl_s
        self._max_entries = max_entries
        self._monotonic = monotonic
        self._entries: OrderedDict[str, tuple[float, Identity | None]] = OrderedDict()

    async def authenticate(self, authorization: str | None) -> Identity:
        """The identity behind `Authorization: Bearer <key>`, or an auth error."""
        if not authorization:
            raise MissingApiKey()
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise MissingApiKey("Authorization must be: Bearer <key>")
        if not _well_formed(key):
            raise InvalidApiKey()
        key_hash = hash_key(key)
        now = self._monotonic()
        cached = self._entries.get(key_hash)
        if cached is not None and cached[0] > now:
            self._entries.move_to_end(key_hash)
            identity = cached[1]
        else:
            identity = await self._ledger.lookup_key(key_hash)
            ttl = self._ttl_s if identity is not None else self._negative_ttl_s
            self._remember(key_hash, now + ttl, identity)
        if identity is None:
            raise InvalidApiKey()
        return identity

    def _remember(self, key_hash: str, expires: float, identity: Identity | None) -> None:
        self._entries[key_hash] = (expires, identity)
        self._entries.move_to_end(key_hash)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)


def _well_formed(key: str) -> bool:
    return (
        len(key) == _KEY_LENGTH
        and key.startswith(KEY_PREFIX)
        and _ALNUM.issuperset(key[len(KEY_PREFIX) :])
    )
