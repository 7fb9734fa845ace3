"""What the gateway takes from a client before it admits a request (SPEC 4, the edge): the
target path as matched and forwarded, the body under its size and deadline, and the body as
priced when it arrives compressed."""

from __future__ import annotations

import asyncio
import re
import zlib
from urllib.parse import unquote

from aiohttp import web

from gateway.errors import PayloadTooLarge, RequestTimeout, ValidationFailed

# A dot-segment (".", "..", either dot percent-encoded) as a whole segment, or an encoded "/"
# or "\": a path holding one can name another route to the upstream than the one matched.
_UNSAFE = re.compile(r"(?:^|/)(?:\.|%2e){1,2}(?:/|$)|%2f|%5c|\\", re.IGNORECASE)
_DECODABLE = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}


def target(request: web.Request) -> tuple[str, str]:
    """(path to match, path and query to forward), both from the request line as sent."""
    raw = request.raw_path
    raw_path = raw.partition("?")[0]
    if _UNSAFE.search(raw_path) or not raw_path.startswith("/"):
        raise ValidationFailed(
            "The path must not hold dot-segments or an encoded / or \\", details={"field": "path"}
        )
    return unquote(raw_path, errors="surrogateescape"), raw


def check_declared_length(request: web.Request, limit: int) -> None:
    """A declared body over the limit is refused before anything else is looked at."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(details={"limit_bytes": limit})


async def read_body(request: web.Request, limit: int, deadline_s: float) -> bytes:
    """The whole body, at most `limit` bytes, within `deadline_s` (then 408). A client that
    asked `Expect: 100-continue` is told to go on only now, after its key was checked."""
    if not request.body_exists:
        return b""
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    content = request.content
    if content.is_eof():  # the whole body came with the head, the common case: no timer
        body = content.read_nowait()
        if len(body) > limit:
            raise PayloadTooLarge(details={"limit_bytes": limit})
        return body
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(deadline_s):
            async for chunk in request.content.iter_any():
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(details={"limit_bytes": limit})
                chunks.append(chunk)
    except TimeoutError as exc:
        raise RequestTimeout(details={"limit_s": deadline_s}) from exc
    return b"".join(chunks)


def decoded(request: web.Request, body: bytes, limit: int) -> bytes:
    """The body as pricing reads it: gzip and deflate undone (at most `limit` bytes out, so a
    small bomb cannot blow up), anything else refused. The upstream still gets `body`."""
    coding = request.headers.get("Content-Encoding")
    if coding is None:
        return body
    coding = coding.strip().lower()
    if coding in ("", "identity") or not body:
        return body
    wbits = _DECODABLE.get(coding)
    if wbits is None:
        raise ValidationFailed(
            "Content-Encoding must be gzip or deflate", details={"field": "Content-Encoding"}
        )
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit)
        if inflater.unconsumed_tail:
            raise PayloadTooLarge(details={"limit_bytes": limit})
        if not inflater.eof or inflater.unused_data:
            raise zlib.error("truncated or trailing data")
    except zlib.error as exc:
        raise ValidationFailed(
            f"The body is not valid {coding}", details={"field": "Content-Encoding"}
        ) from exc
    return out


def client_gone(request: web.Request) -> bool:
    """The client hung up (its connection closed) while the request was served."""
    transport = request.transport
    return transport is None or transport.is_closing()
