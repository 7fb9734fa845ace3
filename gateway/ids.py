"""Random identifiers: `<kind>_` + base62, from the OS's CSPRNG."""

from __future__ import annotations

import secrets
import string

_BASE62 = string.digits + string.ascii_letters


def random_base62(length: int) -> str:
    return "".join(secrets.choice(_BASE62) for _ in range(length))


def new_id(kind: str, length: int = 16) -> str:
    return f"{kind}_{random_base62(length)}"
