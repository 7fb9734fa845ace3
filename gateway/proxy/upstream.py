"""Forwarding to an upstream, and the header hygiene on both sides of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

import aiohttp
from multidict import CIMultiDict, CIMultiDictProxy

from gateway.catalog.models import Upstream
from gateway.errors import UpstreamError, UpstreamTimeout, ValidationFailed
from gateway.store.ledger import Identity

# RFC 9110 section 7.6.1, plus the framing headers aiohttp computes itself.
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
_NOT_FORWARDED = _HOP_BY_HOP | {"authorization", "x-forwarded-for"}
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
) -> CIMultiDict[str]:
    """What the upstream sees: end-to-end headers only, no credentials, the gateway's own."""
    dropped = _NOT_FORWARDED | _connection_tokens(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in dropped or lower.startswith("x-gateway-"):
            continue
        out.add(name, _clean(name, value))
    forwarded = incoming.get("X-Forwarded-For")
    if forwarded is not None:
        forwarded = _clean("X-Forwarded-For", forwarded)
    if client_ip:
        forwarded = f"{forwarded}, {client_ip}" if forwarded else client_ip
    if forwarded:
        out["X-Forwarded-For"] = forwarded
    out["X-Request-Id"] = request_id
    out["X-Gateway-Account"] = who.account_id
    out["X-Gateway-Org"] = who.org_id
    return out


def _clean(name: str, value: str) -> str:
    # aiohttp's parser already refuses these; this guards anything that reaches us otherwise.
    if any(char in value for char in _FORBIDDEN_CHARS):
        raise ValidationFailed(f"Header {name} holds a control character", details={"field": name})
    return value


def response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """What the client sees of the upstream's headers (the gateway adds its own after)."""
    dropped = _HOP_BY_HOP | _connection_tokens(incoming)
    return CIMultiDict(
        (name, value) for name, value in incoming.items() if name.lower() not in dropped
    )


def _connection_tokens(headers: CIMultiDictProxy[str]) -> frozenset[str]:
    tokens = (t.strip().lower() for v in headers.getall("Connection", ()) for t in v.split(","))
    return frozenset(t for t in tokens if t)


async def forward(
    session: aiohttp.ClientSession,
    upstream: Upstream,
    *,
    method: str,
    path_qs: str,
    headers: CIMultiDict[str],
    body: bytes,
) -> UpstreamReply:
    """Send the request and read the whole answer; failures become UpstreamError/Timeout."""
    timeout = aiohttp.ClientTimeout(
        total=upstream.timeout_s, sock_connect=upstream.connect_timeout_s
    )
    started = time.perf_counter()
    try:
        async with session.request(
            method,
            upstream.url + path_qs,
            headers=headers,
            data=body or None,
            timeout=timeout,
            allow_redirects=False,
        ) as reply:
            content = await reply.read()
            return UpstreamReply(
                reply.status,
                response_headers(reply.headers),
                content,
                time.perf_counter() - started,
            )
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise UpstreamError(details={"reason": type(exc).__name__}) from exc


def new_session() -> aiohttp.ClientSession:
    """One pooled session for every upstream; bodies pass through still encoded."""
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, enable_cleanup_closed=True)
    return aiohttp.ClientSession(
        connector=connector, auto_decompress=False, skip_auto_headers=("User-Agent",)
    )
