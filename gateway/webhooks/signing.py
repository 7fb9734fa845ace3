"""Per-org webhook signing secrets (SPEC 11): create or rotate, delete, status, and the HMAC.

A signed delivery carries `<prefix>Timestamp: <unix seconds>` and `<prefix>Signature:
v1=<hex HMAC-SHA256(secret, "<timestamp>.<raw body>")>`, keyed by the whole `whsec_...` string
as UTF-8. The secret is kept in the store as is: signing needs it, a hash would not do.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from gateway.clock import from_ms, iso
from gateway.ids import random_base62
from gateway.store import keys

SECRET_PREFIX = "whsec_"
SECRET_CHARS = 32  # base62: about 190 bits


def new_secret() -> str:
    return SECRET_PREFIX + random_base62(SECRET_CHARS)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of "<timestamp>.<body>" keyed by the whole secret."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def signed_headers(prefix: str, secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {
        f"{prefix}Timestamp": str(timestamp),
        f"{prefix}Signature": f"v1={signature(secret, timestamp, body)}",
    }


async def rotate(client: Any, account_id: str, org_id: str, now_ms: int) -> str:
    """A new secret for the org, replacing any old one at once; returned once, never shown
    again."""
    secret = new_secret()
    await client.hset(
        keys.webhook_secret(account_id, org_id), mapping={"secret": secret, "created_at": now_ms}
    )
    return secret


async def delete(client: Any, account_id: str, org_id: str) -> None:
    """Deliveries of the org go unsigned from now on."""
    await client.delete(keys.webhook_secret(account_id, org_id))


async def current(client: Any, account_id: str, org_id: str) -> str | None:
    """The org's secret, read at each delivery attempt (a rotation applies to the next one)."""
    secret = await client.hget(keys.webhook_secret(account_id, org_id), "secret")
    return None if secret is None else str(secret)


async def status(client: Any, account_id: str, org_id: str) -> dict[str, Any]:
    """`{"signing": bool, "created_at": ISO | null}`; never the secret."""
    created = await client.hget(keys.webhook_secret(account_id, org_id), "created_at")
    if created is None:
        return {"signing": False, "created_at": None}
    return {"signing": True, "created_at": iso(from_ms(int(created)))}
