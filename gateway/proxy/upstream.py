"""Forwarding to an upstream, and the header hygiene on both sides of it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.catalog.models import Upstream
from gateway.errors import UpstreamError, UpstreamTimeout, ValidationFailed
from gateway.proxy.http1 import UpstreamClient, UpstreamProtocolError, UpstreamResponse
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
# SPEC 4, the edge: the gateway's request id replaces the client's; `Forwarded` could claim
# another client address; the gateway's own X-Forwarded-For is rebuilt below.
_NOT_FORWARDED = _HOP_BY_HOP | {
    "authorization",
    "x-forwarded-for",
    "expect",
    "x-request-id",
    "forwarded",
}
# What the upstream may not say to the client: cookies (the gateway's customers are not the
# upstream's), the gateway's own tracking headers (the gateway's values replace them), and
# who serves (Server: gateway).
_NOT_RETURNED = _HOP_BY_HOP | {
    "set-cookie",
    "set-cookie2",
    "server",
    "x-request-id",
    "x-latency-ms",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-credits-charged",
    "x-credits-remaining",
    "x-concurrent-limit",
    "x-concurrent-current",
    "x-concurrent-remaining",
    "x-concurrency-limit",
    "x-concurrency-current",
    "x-concurrency-remaining",
    "idempotent-replayed",
    "x-content-type-options",
}


@dataclass(frozen=True, slots=True)
class UpstreamReply:
    """An upstream reply whose head arrived; `body` streams the rest."""

    status: int
    headers: CIMultiDict[str]
    body: UpstreamResponse
    started: float


def request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    request_id: str,
    who: Identity,
    client_ip: str | None,
) -> list[tuple[str, str]]:
    """What the upstream sees: end-to-end headers only, no credentials, the gateway's own."""
    dropped = _also_named_by(incoming.getall("Connection", []), _NOT_FORWARDED)
    # A name with `_` is dropped whole: CGI-style upstreams read `X_Gateway_Org` as
    # `X-Gateway-Org`, so it could pose as one of the gateway's own headers.
    out = [
        (name, _clean(name, value))
        for name, value in incoming.items()
        if not ((lower := name.lower()) in dropped or lower.startswith("x-gateway-") or "_" in name)
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
    if "\r" in value or "\n" in value or "\x00" in value:
        raise ValidationFailed(f"Header {name} holds a control character", details={"field": name})
    return value


def response_headers(incoming: list[tuple[str, str]]) -> CIMultiDict[str]:
    """What the client sees of the upstream's headers (the gateway adds its own after)."""
    connection = [value for name, value in incoming if name.lower() == "connection"]
    dropped = _also_named_by(connection, _NOT_RETURNED)
    return CIMultiDict([(name, value) for name, value in incoming if name.lower() not in dropped])


def _also_named_by(connection: list[str], dropped: frozenset[str]) -> frozenset[str]:
    """`dropped` plus the headers a Connection header names (RFC 9110 7.6.1); no new set
    in the usual case of none."""
    if not connection:
        return dropped
    tokens = (t.strip().lower() for v in connection for t in v.split(","))
    return dropped | {t for t in tokens if t}


async def forward(
    client: UpstreamClient,
    upstream: Upstream,
    *,
    method: str,
    path_qs: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> UpstreamReply:
    """Send the request and wait for the reply's head; failures become UpstreamError/Timeout.
    The body is read by the caller (read_part)."""
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
    return UpstreamReply(reply.status, response_headers(reply.headers), reply, started)


async def read_part(reply: UpstreamReply) -> bytes:
    """The next part of the reply's body (b"" at its end); a cut becomes UpstreamError or
    UpstreamTimeout."""
    try:
        return await reply.body.read()
    except TimeoutError as exc:
        raise UpstreamTimeout() from exc
    except (OSError, UpstreamProtocolError) as exc:
        raise UpstreamError(details={"reason": type(exc).__name__}) from exc
