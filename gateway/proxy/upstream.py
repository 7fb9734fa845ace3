"""Forwarding to an upstream, and the header hygiene on both sides of it."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.catalog.models import Upstream
from gateway.errors import UpstreamError, UpstreamTimeout, ValidationFailed
from gateway.proxy.http1 import UpstreamClient, UpstreamProtocolError
from gateway.store.ledger import Identity

# RFC 9110 section 7.6.1, plus the framing headers the client computes itself, and Expect:
# the body is read whole before forwarding, so there is nothing for the upstream to continue.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "x-forwarded-for", "expect"}
_FORBIDDEN_CHARS = ("\r", "\n", "\x00")


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    status: int
    headers: CIMultiDict[str]
    body: bytes
    seconds: float


def request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    request_id: str,
    who: Identity,
    client_ip: str | None,
) -> list[tuple[str, str]]:
    """What the upstream sees: end-to-end headers only, no credentials, the gateway's own."""
    dropped = _NOT_FORWARDED | _connection_tokens(incoming.getall("Connection", ()))
    out = [
        (name, _clean(name, value))
        for name, value in incoming.items()
        if not ((lower := name.lower()) in dropped or lower.startswith("x-gateway-"))
    ]
    forwarded = incoming.get("X-Forwarded-For")
    if forwarded is not None:
        forwarded = _clean("X-Forwarded-For", forwarded)
    if client_ip:
        forwarded = f"{forwarded}, {client_ip}" if forwarded else client_ip
    if forwarded:
        out.append(("X-Forwarded-For", forwarded))
    out.append(("X-Request-Id", request_id))
    out.append(("X-Gateway-Account", who.account_id))
    out.append(("X-Gateway-Org", who.org_id))
    return out


def _clean(name: str, value: str) -> str:
    # aiohttp's parser already refuses these; this guards anything that reaches us otherwise.
    if any(char in value for char in _FORBIDDEN_CHARS):
        raise ValidationFailed(f"Header {name} holds a control character", details={"field": name})
    return value


def response_headers(incoming: list[tuple[str, str]]) -> CIMultiDict[str]:
    """What the client sees of the upstream's headers (the gateway adds its own after)."""
    dropped = _HOP_BY_HOP | _connection_tokens(
        value for name, value in incoming if name.lower() == "connection"
    )
    return CIMultiDict((name, value) for name, value in incoming if name.lower() not in dropped)


def _connection_tokens(values: Iterable[str]) -> frozenset[str]:
    tokens = (t.strip().lower() for v in values for t in v.split(","))
    return frozenset(t for t in tokens if t)


async def forward(
    client: UpstreamClient,
    upstream: Upstream,
    *,
    method: str,
    path_qs: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> UpstreamReply:
    """Send the request and read the whole answer; failures become UpstreamError/Timeout."""
    started = time.perf_counter()
    try:
        reply = await client.request(
            upstream.url,
            method,
            path_qs,
            headers,
            body,
            timeout_s=upstream.timeout_s,
            connect_timeout_s=upstream.connect_timeout_s,
        )
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (OSError, UpstreamProtocolError) as exc:
        raise UpstreamError(details={"reason": type(exc).__name__}) from exc
    return UpstreamReply(
        reply.status,
        response_headers(reply.headers),
        reply.body,
        time.perf_counter() - started,
    )
