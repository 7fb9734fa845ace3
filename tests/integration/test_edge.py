"""SPEC 4, the edge: what a hostile or broken client or upstream gets. Real sockets on both
sides: raw TCP clients for what aiohttp's client would never send, raw TCP upstreams for
what a well-behaved server would never answer."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import os
import re
import socket
import stat
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.integration.test_faults import account_state
from tests.support.harness import DATA, Running, catalog_for, start_gateway
from tests.support.raw import RawServer
from tests.support.redis_server import free_port
from tests.support.upstream import RecordingUpstream

FLAT = "/v1/monitor/flat"  # 10 credits, GET and POST
PRICED = "/v1/monitor/chatgpt"  # 7 + rules that read the body
FREE = "/v1/countries"  # unmetered


EDGE_LIMITS = {
    "client_header_timeout_s": 0.5,
    "client_body_timeout_s": 0.5,
    "keepalive_timeout_s": 0.5,
    "max_response_bytes": 1_000_000,
    "max_kept_response_bytes": 1000,
}


async def _gateway(redis_url: str, upstream_url: str, **limits: Any) -> Running:
    catalog = catalog_for(upstream_url)
    merged = catalog.limits.model_copy(update={**EDGE_LIMITS, **limits})
    # The unmetered route answers HEAD too, for the tests of HEAD replies.
    routes = tuple(
        r.model_copy(update={"methods": ("GET", "HEAD")}) if r.path == FREE else r
        for r in catalog.routes
    )
    return await start_gateway(
        redis_url, catalog.model_copy(update={"limits": merged, "routes": routes})
    )


@pytest.fixture
async def edge(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await _gateway(redis_url, upstream.url)
    yield running
    await running.close()


def _port(running: Running) -> int:
    return int(running.public.rsplit(":", 1)[1])


async def _raw(running: Running, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", _port(running))
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the gateway sends until it closes the connection (fails if it does not)."""
    return await asyncio.wait_for(reader.read(), seconds)


# ------------------------------------------------------------- 1, 2: time and memory a client takes


async def test_a_missing_key_is_refused_before_the_body_is_read(edge: Running) -> None:
    # The test catalog's body limit is 4096 bytes: declared within it, sent in part.
    head = f"POST {FLAT} HTTP/1.1\r\nHost: x\r\nContent-Length: 4000\r\n\r\n".encode()
    reader, writer = await _raw(edge, head + b"x" * 100)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.readuntil(b"MISSING_API_KEY"), 2)
    assert time.monotonic() - started < 0.4  # at once, not after the body deadline
    assert answer.startswith(b"HTTP/1.1 401")
    assert b"Connection: close" in answer
    # The rest of the body is read and thrown away for at most LINGER_S, then the
    # connection ends: nothing of it is kept.
    await _closed_within(reader, 3)
    writer.close()


async def test_a_body_that_stalls_gets_408_after_the_body_deadline(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    head = (
        f"POST {FLAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    reader, writer = await _raw(edge, head + b"x" * 10)
    started = time.monotonic()
    answer = await asyncio.wait_for(reader.readuntil(b"REQUEST_TIMEOUT"), 3)
    assert 0.4 < time.monotonic() - started < 1.5
    assert answer.startswith(b"HTTP/1.1 408")
    assert upstream.requests == []
    writer.close()


@pytest.mark.parametrize("whole", [True, False], ids=["with-the-head", "in-parts"])
async def test_a_chunked_body_over_the_limit_is_413_whenever_it_arrives(
    edge: Running, upstream: RecordingUpstream, whole: bool
) -> None:
    """No declared length to refuse up front: the size is checked on the body itself, both
    when it came whole with the head (read without waiting) and when it comes in parts."""
    c = await edge.new_customer("five")
    head = (
        f"POST {FLAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b"%x\r\n%s\r\n" % (2500, b"x" * 2500)
    if whole:
        reader, writer = await _raw(edge, head + chunk + chunk + b"0\r\n\r\n")
    else:
        reader, writer = await _raw(edge, head + chunk)
        await asyncio.sleep(0.1)
        writer.write(chunk + b"0\r\n\r\n")
    answer = await asyncio.wait_for(reader.readuntil(b"PAYLOAD_TOO_LARGE"), 3)
    assert answer.startswith(b"HTTP/1.1 413")
    assert upstream.requests == []
    writer.close()


async def test_a_chunked_body_within_the_limit_reaches_the_upstream_whole(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    head = (
        f"POST {FLAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode()
    reader, writer = await _raw(edge, head + b"3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
    answer = await _closed_within(reader, 3)
    assert answer.startswith(b"HTTP/1.1 200")
    assert [seen.body for seen in upstream.requests] == [b"abcdefg"]
    writer.close()


async def test_idle_and_half_sent_connections_are_closed_at_their_deadlines(
    edge: Running,
) -> None:
    idle = [await _raw(edge, b"") for _ in range(50)]
    half = [await _raw(edge, f"GET {FREE} HTTP/1.1\r\nHost: x\r\n".encode()) for _ in range(50)]
    # A connection that finished a request and then idles.
    after, writer = await _raw(edge, f"GET {FREE} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert (await after.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 401")
    started = time.monotonic()
    for reader, _ in [*idle, *half, (after, writer)]:
        await _closed_within(reader, 3)
    assert time.monotonic() - started < 2  # limits are 0.5 s; aiohttp's default is an hour
    for _, w in [*idle, *half, (after, writer)]:
        w.close()


async def test_a_slowly_trickled_head_is_cut_at_the_head_deadline(edge: Running) -> None:
    reader, writer = await _raw(edge, b"GET / HTTP/1.1\r\n")
    started = time.monotonic()
    for _ in range(10):  # a byte every 0.1 s keeps the line busy, never finishing the head
        await asyncio.sleep(0.1)
        if reader.at_eof():
            break
        writer.write(b"X")
        try:
            await writer.drain()
        except ConnectionError:
            break
    await _closed_within(reader, 2)
    assert time.monotonic() - started < 1.5
    writer.close()


# ------------------------------------------------------------- 3: replies streamed, not buffered


async def test_server_sent_events_reach_the_client_as_they_are_sent(redis_url: str) -> None:
    release = asyncio.Event()

    async def events(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        for n in range(3):
            event = f"data: {n}\n\n".encode()
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await writer.drain()
            if n == 1:
                await release.wait()
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async with RawServer(events) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            async with gw.http.post(
                gw.public + FLAT, headers={"Authorization": f"Bearer {c.key}"}
            ) as reply:
                assert reply.status == 200
                assert reply.headers["X-Credits-Charged"] == "10"
                assert reply.headers["X-Request-Id"].startswith("req_")
                assert int(reply.headers["X-Latency-Ms"]) >= 0
                seen = b""
                while b"data: 0" not in seen:  # before the upstream is done
                    seen += await asyncio.wait_for(reply.content.readany(), 2)
                release.set()
                seen += await reply.content.read()
            assert seen == b"data: 0\n\ndata: 1\n\ndata: 2\n\n"
            state = await account_state(redis_url, c.account_id, c.org_id)
            assert state == {"used": 10, "held": 0, "leases": 0}
        finally:
            await gw.close()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def test_a_big_reply_streams_through_without_being_held_whole(redis_url: str) -> None:
    size = 96 * 1024 * 1024
    block = b"z" * 65536

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async with RawServer(big) as upstream:
        gw = await _gateway(redis_url, upstream.url, max_response_bytes=size)
        try:
            c = await gw.new_customer("five")
            before = _rss_bytes()
            received = 0
            async with gw.http.get(
                gw.public + FLAT, headers={"Authorization": f"Bearer {c.key}"}
            ) as reply:
                assert reply.headers["Content-Length"] == str(size)
                async for chunk in reply.content.iter_any():
                    received += len(chunk)
            grew = _rss_bytes() - before
            assert received == size
            assert grew < 32 * 1024 * 1024, f"{grew / 2**20:.0f} MiB for a 96 MiB reply"
            state = await account_state(redis_url, c.account_id, c.org_id)
            assert state["used"] == 10
        finally:
            await gw.close()


async def test_a_reply_over_the_limit_is_cut_and_charged_nothing(redis_url: str) -> None:
    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            writer.write(b"10000\r\n" + b"y" * 65536 + b"\r\n")
            await writer.drain()

    async def declared(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"y" * 1000)
        await writer.drain()
        await asyncio.sleep(1)

    async with RawServer(endless) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            with pytest.raises(aiohttp.ClientPayloadError):
                async with gw.http.get(
                    gw.public + FLAT, headers={"Authorization": f"Bearer {c.key}"}
                ) as reply:
                    assert reply.status == 200  # the head went out before the cut
                    await reply.read()
            await asyncio.sleep(0.1)
            state = await account_state(redis_url, c.account_id, c.org_id)
            assert state == {"used": 0, "held": 0, "leases": 0}
        finally:
            await gw.close()

    async with RawServer(declared) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            status, _, body = await gw.call("GET", FLAT, c.key)
            assert status == 502 and body["error"]["code"] == "UPSTREAM_ERROR"
            state = await account_state(redis_url, c.account_id, c.org_id)
            assert state == {"used": 0, "held": 0, "leases": 0}
        finally:
            await gw.close()


async def test_a_body_cut_short_is_not_charged_and_the_client_sees_the_cut(
    redis_url: str,
) -> None:
    async def short(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(b"b" * 1000)
        await writer.drain()

    async with RawServer(short) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            with pytest.raises(aiohttp.ClientPayloadError):
                async with gw.http.get(
                    gw.public + FLAT, headers={"Authorization": f"Bearer {c.key}"}
                ) as reply:
                    await reply.read()
            await asyncio.sleep(0.1)
            state = await account_state(redis_url, c.account_id, c.org_id)
            assert state == {"used": 0, "held": 0, "leases": 0}
        finally:
            await gw.close()


@pytest.mark.parametrize(
    "head",
    [
        b"".join(b"X-H%d: v\r\n" % n for n in range(101)),  # 101 headers
        b"X-Big: " + b"v" * 70_000 + b"\r\n",  # one header over 64 KiB
    ],
    ids=["too-many-headers", "head-over-64KiB"],
)
async def test_an_upstream_head_over_the_limits_is_a_502(redis_url: str, head: bytes) -> None:
    async def oversized(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + head + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()

    async with RawServer(oversized) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            status, _, body = await gw.call("GET", FLAT, c.key)
            assert status == 502 and body["error"]["code"] == "UPSTREAM_ERROR"
            assert (await account_state(redis_url, c.account_id, c.org_id))["used"] == 0
        finally:
            await gw.close()


async def test_a_reply_too_big_to_keep_is_not_replayed(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    headers = {"Idempotency-Key": "big-one"}
    status, _, _ = await edge.call("POST", f"{FLAT}?size=5000", c.key, headers=headers)
    assert status == 200
    status, _, body = await edge.call("POST", f"{FLAT}?size=5000", c.key, headers=headers)
    assert status == 409 and body["error"]["code"] == "RESOURCE_ALREADY_EXISTS"
    assert len(upstream.requests) == 1  # never a second upstream call for the same key


# ------------------------------------------------------------- 4: a pooled connection that talks


async def test_bytes_on_an_idle_pooled_connection_never_reach_the_next_request(
    redis_url: str,
) -> None:
    connections = 0

    async def late_extra(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:
            await upstream.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")
            await writer.drain()
            await asyncio.sleep(0.1)  # the connection now idles in the gateway's pool
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
            await writer.drain()
        while True:
            await upstream.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nmine")
            await writer.drain()

    async with RawServer(late_extra) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            assert (await gw.call("GET", FLAT, c.key))[2] == b"first"
            await asyncio.sleep(0.3)
            status, _, body = await gw.call("GET", FLAT, c.key)
            assert (status, body) == (200, b"mine")
        finally:
            await gw.close()


# ------------------------------------------------------------- 5: upstream headers


async def test_upstream_tracking_headers_and_cookies_never_reach_the_client(
    redis_url: str,
) -> None:
    async def lying(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await upstream.read_request(reader)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Credits-Charged: abc\r\n"
                b"X-Credits-Remaining: 999999\r\nX-RateLimit-Limit: 1\r\n"
                b"Set-Cookie: session=upstream\r\nServer: upstream/1.0\r\n"
                b"X-Request-Id: upstream-id\r\n\r\nok"
            )
            await writer.drain()

    async with RawServer(lying) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            status, headers, _ = await gw.call("GET", FREE, c.key)  # unmetered
            assert status == 200
            assert "X-Credits-Charged" not in headers and "Set-Cookie" not in headers
            assert headers["Server"] == "gateway"
            assert headers["X-Request-Id"].startswith("req_")
            status, headers, _ = await gw.call("GET", FLAT, c.key)  # metered
            assert headers["X-Credits-Charged"] == "10"
            assert headers.getall("X-Credits-Remaining") == ["99990"]
            assert headers["X-RateLimit-Limit"] != "1"
            async with gw.http.get(gw.admin + "/metrics") as reply:
                text = await reply.text()
            assert f'gateway_credits_charged_total{{route="{FREE}"}}' not in text
            assert f'gateway_requests_total{{code="200",outcome="free",route="{FREE}"}} 1.0' in text
        finally:
            await gw.close()


async def test_a_replay_is_logged_as_charging_nothing(edge: Running) -> None:
    c = await edge.new_customer("five")
    headers = {"Idempotency-Key": "once"}
    await edge.call("POST", FLAT, c.key, headers=headers)
    status, replayed, _ = await edge.call("POST", FLAT, c.key, headers=headers)
    assert status == 200 and replayed["Idempotent-Replayed"] == "true"
    lines = [line for line in edge.access_lines() if line["route"] == FLAT]
    assert [line["credits"] for line in lines] == [10, 0]


# ------------------------------------------------------------- 6, 7: what is forwarded


async def test_client_headers_that_could_pose_as_the_gateways_are_not_forwarded(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    await edge.call(
        "POST",
        FLAT,
        c.key,
        headers={
            "X-Request-Id": "client-chosen",
            "X_Gateway_Account": "acct_someone_else",
            "X-Gateway-Org": "org_else",
            "Forwarded": "for=10.0.0.1",
            "X-Kept": "yes",
        },
    )
    seen = upstream.requests[-1].headers
    assert seen.getall("X-Request-Id") != ["client-chosen"]
    assert len(seen.getall("X-Request-Id")) == 1 and seen["X-Request-Id"].startswith("req_")
    assert seen.getall("X-Gateway-Account") == [c.account_id]
    assert "X_Gateway_Account" not in seen and "Forwarded" not in seen
    assert seen["X-Kept"] == "yes"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/files/../monitor/chatgpt",
        "/v1/files/%2e%2e/monitor/chatgpt",
        "/v1/files/.%2E/monitor/chatgpt",
        "/v1/files/./a",
        "/v1/files/a%2Fb",
        "/v1/files/a%5cb",
        "/v1/files/a\\b",
    ],
)
async def test_dot_segments_and_encoded_slashes_are_refused(
    edge: Running, upstream: RecordingUpstream, path: str
) -> None:
    c = await edge.new_customer("five")
    reader, writer = await _raw(
        edge,
        f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
        "Connection: close\r\n\r\n".encode(),
    )
    answer = await _closed_within(reader, 2)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400") and b"VALIDATION_ERROR" in answer
    assert upstream.requests == []


async def _reply(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response with a Content-Length: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
    assert length is not None, head
    return head, await asyncio.wait_for(reader.readexactly(int(length[1])), 2)


@pytest.mark.parametrize(
    ("version", "connection", "kept", "says"),
    [
        ("1.1", None, True, None),
        ("1.1", "close", False, b"close"),
        ("1.0", None, False, None),
        ("1.0", "keep-alive", True, b"keep-alive"),
    ],
)
async def test_a_proxied_reply_keeps_the_connection_as_http_says(
    edge: Running,
    upstream: RecordingUpstream,
    version: str,
    connection: str | None,
    kept: bool,
    says: bytes | None,
) -> None:
    """A reply whose body came whole is sent in one piece: Content-Length, Date, the security
    headers and the keep-alive rules of each HTTP version as for any other response."""
    c = await edge.new_customer("five")
    extra = f"Connection: {connection}\r\n" if connection else ""
    request = (
        f"POST {FLAT}?size=300 HTTP/{version}\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
        f"{extra}Content-Length: 2\r\n\r\n{{}}"
    ).encode()
    reader, writer = await _raw(edge, request)
    head, body = await _reply(reader)
    assert head.startswith(f"HTTP/{version} 200 OK\r\n".encode())
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:] if line)
    assert headers[b"Content-Length"] == str(len(body)).encode() and len(body) > 300
    assert headers[b"Content-Type"] == b"application/json" and b"Date" in headers
    assert headers[b"Server"] == b"gateway" and headers[b"X-Content-Type-Options"] == b"nosniff"
    assert headers[b"X-Credits-Charged"] == b"10"
    assert headers.get(b"Connection") == says
    if kept:  # a second request on the same connection is answered
        writer.write(request)
        assert (await _reply(reader))[0].startswith(f"HTTP/{version} 200 OK".encode())
        writer.close()
    else:
        assert await _closed_within(reader, 2) == b""
        writer.close()
    assert len(upstream.requests) == (2 if kept else 1)


async def test_what_is_matched_is_what_is_forwarded(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    reader, writer = await _raw(
        edge,
        f"GET /v1/files/a%20b/%7Euser?q=a%2Fb HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {c.key}\r\nConnection: close\r\n\r\n".encode(),
    )
    answer = await _closed_within(reader, 2)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200")
    assert upstream.paths() == ["/v1/files/a%20b/%7Euser?q=a%2Fb"]


# ------------------------------------------------------------- 8: encoded and duplicate bodies


async def test_a_gzip_body_is_priced_decoded_and_forwarded_as_sent(redis_url: str) -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()

    compressed = gzip.compress(json.dumps({"pages": 3}).encode())
    async with RawServer(ok) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            status, headers, _ = await gw.call(
                "POST",
                PRICED,
                c.key,
                data=compressed,
                headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
            )
        finally:
            await gw.close()
    assert status == 200 and headers["X-Credits-Charged"] == "11"  # 7 + 2 x (3 - 1)
    head, _, body = upstream.requests[-1].partition(b"\r\n\r\n")
    assert body == compressed and b"Content-Encoding: gzip" in head


@pytest.mark.parametrize(
    ("encoding", "body"),
    [("gzip", b"not gzip at all"), ("br", b"\x0b\x02\x80{}\x03"), ("zstd", b"x")],
)
async def test_unknown_or_broken_encodings_are_400(
    edge: Running, upstream: RecordingUpstream, encoding: str, body: bytes
) -> None:
    c = await edge.new_customer("five")
    status, _, answer = await edge.call(
        "POST", PRICED, c.key, data=body, headers={"Content-Encoding": encoding}
    )
    assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR"
    assert answer["error"]["details"]["field"] == "Content-Encoding"
    assert upstream.requests == []


async def test_a_priced_body_with_a_duplicate_key_is_400(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    status, _, answer = await edge.call("POST", PRICED, c.key, data=b'{"pages": 10, "pages": 1}')
    assert status == 400 and answer["error"]["code"] == "VALIDATION_ERROR"
    assert upstream.requests == []


# ------------------------------------------------------------- 10, 12: logs, headers, files


async def test_a_malformed_header_never_puts_a_key_in_the_log(
    edge: Running, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "sk_live_" + "S" * 32
    with caplog.at_level(logging.DEBUG):
        for port in (_port(edge), int(edge.admin.rsplit(":", 1)[1])):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            line = f"Authorization: Bearer {secret}\x01\r\n"
            writer.write(f"GET {FLAT} HTTP/1.1\r\nHost: x\r\n{line}\r\n".encode())
            await writer.drain()
            answer = await _closed_within(reader, 2)
            writer.close()
            assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.0 400"))
            assert b"Server: gateway" in answer and b"aiohttp" not in answer
    logged = "\n".join(f"{r.getMessage()} {r.exc_text or ''} {vars(r)}" for r in caplog.records)
    assert secret not in logged and "S" * 32 not in logged


async def test_a_non_utf8_admin_token_is_401_not_500(edge: Running) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", int(edge.admin.rsplit(":", 1)[1]))
    writer.write(
        b"GET /admin/accounts/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\n"
        b"Connection: close\r\n\r\n"
    )
    await writer.drain()
    answer = await _closed_within(reader, 2)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 401")


async def test_every_response_says_server_gateway_and_nosniff(edge: Running) -> None:
    for url in (edge.public + FREE, edge.public + "/nowhere", edge.admin + "/healthz"):
        async with edge.http.get(url) as reply:
            assert reply.headers["Server"] == "gateway"
            assert reply.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_second_gateway_on_the_same_port_fails_to_start(
    edge: Running, redis_url: str, upstream: RecordingUpstream
) -> None:
    from gateway.app import build_gateway, serving
    from gateway.settings import Settings

    gw = build_gateway(Settings(redis_url=redis_url), catalog_for(upstream.url))
    with pytest.raises(OSError):
        async with serving(
            gw, host="127.0.0.1", port=_port(edge), admin_host="127.0.0.1", admin_port=0
        ):
            pass


def test_a_second_gateway_on_the_same_ports_exits_1_saying_so() -> None:
    """SPEC 1: ports are the process's own (no SO_REUSEPORT unless --workers)."""
    port, admin_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(port),
        "GATEWAY_ADMIN_PORT": str(admin_port),
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_REDIS_URL": "memory://",
        "GATEWAY_SPOOL_DIR": tempfile.mkdtemp(prefix="gw-spool-"),
    }
    command = [sys.executable, "-m", "gateway", "serve", "--config", str(DATA / "catalog.yaml")]
    first = subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", admin_port)) == 0:
                    break
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.1)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
        assert second.returncode == 1
        assert "cannot listen" in second.stderr and "in use" in second.stderr
        assert first.poll() is None  # the first one serves on, alone
    finally:
        first.terminate()
        first.wait(10)


async def test_spool_files_are_the_gateways_user_alone(edge: Running) -> None:
    from gateway.store.ledger import Identity

    spool = edge.gw.spool
    spool.add(
        Identity("acct_x", "org_x", "key_x"),
        {
            "request_id": "req_x",
            "now_ms": 0,
            "charge": True,
            "route": FLAT,
            "status": 200,
            "latency_ms": 1,
            "idempotency_key": "",
            "response": "-",
        },
    )
    directory = Path(edge.gw.settings.spool_dir)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    files = list(directory.iterdir())
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)


async def test_upstream_heads_pass_through_as_sent(redis_url: str) -> None:
    """HEAD keeps the upstream's Content-Length; a Latin-1 byte in a header value survives
    (as the same character in UTF-8); no Content-Type is made up when the upstream sent none."""

    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await upstream.read_request(reader)
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\nX-Name: caf\xe9\r\n\r\n"
            writer.write(head if request.startswith(b"HEAD") else head + b"x" * 1234)
            await writer.drain()

    async with RawServer(plain) as upstream:
        gw = await _gateway(redis_url, upstream.url)
        try:
            c = await gw.new_customer("five")
            for method in ("HEAD", "GET"):
                reader, writer = await asyncio.open_connection("127.0.0.1", _port(gw))
                writer.write(
                    f"{method} {FREE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n"
                    "Connection: close\r\n\r\n".encode()
                )
                await writer.drain()
                answer = await _closed_within(reader, 2)
                writer.close()
                head = answer.partition(b"\r\n\r\n")[0].lower()
                assert b"content-length: 1234" in head, answer
                assert "x-name: café".encode() in head, answer
                assert b"\r\ncontent-type:" not in head, answer
        finally:
            await gw.close()


@pytest.mark.parametrize(
    ("path", "key", "length", "status"),
    [
        (FLAT, None, 10, 401),
        ("/nowhere", "valid", 10, 404),
        (FLAT, "valid", 10_000_000, 413),
        (FLAT, "valid", 10, 100),
    ],
)
async def test_100_continue_only_once_the_request_may_go_on(
    edge: Running, path: str, key: str | None, length: int, status: int
) -> None:
    c = await edge.new_customer("five")
    auth = f"Authorization: Bearer {c.key}\r\n" if key else ""
    reader, writer = await _raw(
        edge,
        f"POST {path} HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: {length}\r\n"
        "Expect: 100-continue\r\n\r\n".encode(),
    )
    first = await asyncio.wait_for(reader.readuntil(b"\r\n"), 2)
    writer.close()
    assert first.startswith(f"HTTP/1.1 {status} ".encode())


async def test_a_client_that_stops_reading_is_cut_after_the_send_deadline(
    redis_url: str,
) -> None:
    size = 64 * 1024 * 1024  # far more than the sockets' buffers hold

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await upstream.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        block = b"q" * 65536
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    async with RawServer(big) as upstream:
        gw = await _gateway(redis_url, upstream.url, max_response_bytes=size)
        try:
            c = await gw.new_customer("five")
            _reader, writer = await _raw(
                gw,
                f"GET {FLAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {c.key}\r\n\r\n".encode(),
            )
            started = time.monotonic()
            while (await account_state(redis_url, c.account_id, c.org_id))["leases"] == 0:
                await asyncio.sleep(0.02)  # admitted
            while (await account_state(redis_url, c.account_id, c.org_id))["leases"]:
                assert time.monotonic() - started < 5, "a client that reads nothing held on"
                await asyncio.sleep(0.05)
            writer.close()
        finally:
            await gw.close()


async def test_a_request_refused_for_its_input_counts_and_says_its_window(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    status, headers, body = await edge.call("POST", PRICED, c.key, data=b'{"pages": 99}')
    assert status == 400 and body["error"]["details"]["field"] == "pages"
    assert headers["X-RateLimit-Limit"] == "1000"
    first = int(headers["X-RateLimit-Remaining"])
    _, headers, _ = await edge.call("POST", PRICED, c.key, data=b"[]")
    assert int(headers["X-RateLimit-Remaining"]) == first - 1
    assert upstream.requests == []


async def test_a_compressed_body_is_bounded_decoded_and_deflate_is_read_too(
    edge: Running, upstream: RecordingUpstream
) -> None:
    c = await edge.new_customer("five")
    bomb = gzip.compress(b'{"pages": 1, "pad": "' + b"0" * 3_000_000 + b'"}')
    assert len(bomb) < 4096  # within the test catalog's body limit as sent
    status, _, answer = await edge.call(
        "POST", PRICED, c.key, data=bomb, headers={"Content-Encoding": "gzip"}
    )
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"
    status, headers, _ = await edge.call(
        "POST",
        PRICED,
        c.key,
        data=zlib.compress(b'{"pages": 2}'),
        headers={"Content-Encoding": "deflate"},
    )
    assert status == 200 and headers["X-Credits-Charged"] == "9"  # 7 + 2 x (2 - 1)
    assert len(upstream.requests) == 1
