"""The upstream HTTP/1.1 client against real loopback servers: aiohttp for well-behaved ones,
raw asyncio sockets for the odd replies a real upstream can give."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import trustme
from aiohttp import web

from gateway.catalog.models import Upstream
from gateway.errors import UpstreamError, UpstreamTimeout
from gateway.proxy.http1 import UpstreamClient, UpstreamClosed
from gateway.proxy.upstream import forward, read_part, response_headers
from tests.support.raw import RawServer


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@pytest.fixture
async def client() -> AsyncIterator[UpstreamClient]:
    http = UpstreamClient()
    yield http
    await http.close()


async def _aiohttp_server(app: web.Application) -> AsyncIterator[str]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    """Echoes method, target, headers and body; /chunked answers with chunked encoding."""

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path.endswith("/chunked"):
            response = web.StreamResponse(headers={"X-Kind": "chunked"})
            response.enable_chunked_encoding()
            await response.prepare(request)
            for part in (b"first,", b"second,", b"third"):
                await response.write(part)
            await response.write_eof()
            return response
        if request.path.endswith("/empty"):
            return web.Response(status=204)
        headers = {"X-Method": request.method, "X-Target": request.path_qs}
        headers["X-Host"] = request.headers.get("Host", "")
        headers["X-Length"] = request.headers.get("Content-Length", "-")
        return web.Response(body=body or b"no body", headers=headers)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", handle)
    async for url in _aiohttp_server(app):
        yield url


async def _send(
    client: UpstreamClient,
    url: str,
    path: str = "/",
    *,
    method: str = "GET",
    body: bytes = b"",
    headers: tuple[tuple[str, str], ...] = (),
) -> RawReply:
    reply = await client.request(
        url, method, path, list(headers), body, timeout_s=5, connect_timeout_s=2
    )
    parts = []
    while part := await reply.read():
        parts.append(part)
    return RawReply(reply.status, reply.headers, b"".join(parts))


async def _forward_whole(
    client: UpstreamClient, upstream: Upstream, *, method: str = "GET", body: bytes = b""
) -> bytes:
    """Forward a request and read its whole body as the handler does."""
    reply = await forward(client, upstream, method=method, path_qs="/", headers=[], body=body)
    parts = []
    while part := await read_part(reply):
        parts.append(part)
    return b"".join(parts)


async def test_request_line_host_length_and_base_path(client: UpstreamClient, echo: str) -> None:
    body = b'{"prompt": "shoes"}'
    reply = await _send(
        client, echo + "/base", "/v1/x?q=a%20b", method="POST", body=body, headers=(("X-A", "1"),)
    )
    headers = dict(reply.headers)
    assert reply.status == 200 and reply.body == body
    assert headers["X-Target"] == "/base/v1/x?q=a%20b"
    assert headers["X-Host"] == echo.removeprefix("http://")
    assert headers["X-Length"] == str(len(body))
    # An empty POST still says how long its body is.
    empty = await _send(client, echo, method="POST")
    assert dict(empty.headers)["X-Length"] == "0"


async def test_keep_alive_connections_are_reused() -> None:
    async def two_replies(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with RawServer(two_replies) as server:
        http = UpstreamClient()
        for _ in range(5):
            reply = await _send(http, server.url)
            assert reply.body == b"ok"
        await http.close()
    assert server.connections == 1 and len(server.requests) == 5


async def test_idle_connections_left_by_a_burst_expire() -> None:
    async def slow_keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            await asyncio.sleep(0.05)  # long enough for the burst's requests to overlap
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    async with RawServer(slow_keep_alive) as server:
        http = UpstreamClient(idle_timeout_s=0.3)
        await asyncio.gather(*(_send(http, server.url) for _ in range(5)))
        assert server.open == 5
        await asyncio.sleep(0.2)
        await _send(http, server.url)  # reuses the newest; the four others idle on
        await asyncio.sleep(0.2)
        await _send(http, server.url)  # the four are past 0.3 s idle now: dropped
        await asyncio.sleep(0.05)
        assert server.connections == 5 and server.open == 1
        await http.close()


async def test_chunked_204_and_large_bodies(client: UpstreamClient, echo: str) -> None:
    chunked = await _send(client, echo, "/chunked")
    assert chunked.body == b"first,second,third"
    empty = await _send(client, echo, "/empty")
    assert empty.status == 204 and empty.body == b""
    big = bytes(range(256)) * 4096  # 1 MiB, written without joining it to the head
    echoed = await _send(client, echo, "/big", method="PUT", body=big)
    assert echoed.body == big


async def test_head_reply_has_no_body_and_does_not_hang(client: UpstreamClient, echo: str) -> None:
    reply = await _send(client, echo, "/x", method="HEAD")
    assert reply.status == 200 and reply.body == b""
    again = await _send(client, echo, "/x")
    assert again.body == b"no body"


async def test_body_delimited_by_the_end_of_the_connection(client: UpstreamClient) -> None:
    async def http10(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end")
        await writer.drain()

    async with RawServer(http10) as server:
        first = await _send(client, server.url)
        second = await _send(client, server.url)
    assert first.body == second.body == b"until the end"
    assert server.connections == 2  # such a connection cannot be reused


async def test_bytes_after_a_reply_keep_its_connection_out_of_the_pool(
    client: UpstreamClient,
) -> None:
    async def trailing_junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await server.read_request(reader)
            # A whole reply, then the start of another nobody asked for, in one write.
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                b"HTTP/1.1 200 OK\r\nX-Smuggled: yes\r\n"
            )

    async with RawServer(trailing_junk) as server:
        first = await _send(client, server.url)
        second = await _send(client, server.url)
    assert first.headers == second.headers == [("Content-Length", "2")]
    assert server.connections == 2  # the second request did not inherit the half-parsed junk


async def test_a_body_that_ends_with_the_connection_is_not_whole_if_it_was_reset(
    client: UpstreamClient,
) -> None:
    async def reset_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.0 200 OK\r\n\r\npartial")
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN

    async with RawServer(reset_mid_body) as server:
        with pytest.raises(UpstreamError) as cut:
            await _forward_whole(client, Upstream(url=server.url))
    assert cut.value.details == {"reason": "UpstreamClosed"}


async def test_a_body_in_another_transfer_coding_runs_to_the_end(client: UpstreamClient) -> None:
    async def gzip_until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzzzz")
        await writer.drain()

    async with RawServer(gzip_until_close) as server:
        reply = await _send(client, server.url)
    assert reply.status == 200 and reply.body == b"zzzz"


async def test_informational_reply_is_skipped(client: UpstreamClient) -> None:
    async def continue_then_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-A: b\r\n\r\ndone")
        await asyncio.sleep(1)

    async with RawServer(continue_then_ok) as server:
        reply = await _send(client, server.url)
    assert reply.status == 201 and reply.body == b"done"
    assert reply.headers == [("Content-Length", "4"), ("X-A", "b")]


async def test_an_idle_connection_the_server_closed_is_not_used(client: UpstreamClient) -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        # Keep-alive promised, then closed while idle (as servers do on their idle timeout).

    async with RawServer(one_then_close) as server:
        for method in ("GET", "POST", "POST"):
            reply = await _send(client, server.url, method=method)
            assert reply.body == b"ok"
            await asyncio.sleep(0.05)
    assert server.connections == 3 and len(server.requests) == 3


async def test_a_post_lost_on_a_reused_connection_is_not_sent_twice() -> None:
    async def answer_then_swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await server.read_request(reader)  # read the second request, then hang up unanswered

    async with RawServer(answer_then_swallow) as server:
        http = UpstreamClient()
        await _send(http, server.url, method="POST", body=b"1")
        with pytest.raises(UpstreamClosed):
            await _send(http, server.url, method="POST", body=b"2")
        await http.close()
    assert len(server.requests) == 2  # not replayed: the upstream may have acted on it


async def test_a_get_lost_on_a_reused_connection_is_sent_again_once() -> None:
    async def answer_then_swallow(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await server.read_request(reader)
        if server.connections == 1:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
            await server.read_request(reader)
            return  # hang up on the second request without a byte of reply
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nagain")
        await writer.drain()

    async with RawServer(answer_then_swallow) as server:
        http = UpstreamClient()
        await _send(http, server.url)
        reply = await _send(http, server.url)
        await http.close()
    assert reply.body == b"again"
    assert len(server.requests) == 3 and server.connections == 2


async def test_timeouts_and_failures_become_gateway_errors(client: UpstreamClient) -> None:
    hung_up = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        await reader.read()  # returns when the client gives up and closes
        hung_up.set()

    async with RawServer(silent) as server:
        upstream = Upstream(url=server.url, timeout_s=0.3)
        with pytest.raises(UpstreamTimeout):
            await _forward_whole(client, upstream)
        # The upstream sees the gateway give up, so it can stop working on the request.
        await asyncio.wait_for(hung_up.wait(), 2)

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"SMTP ready\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(1)

    async with RawServer(garbage) as server:
        with pytest.raises(UpstreamError) as bad:
            await _forward_whole(client, Upstream(url=server.url))
    assert bad.value.details == {"reason": "UpstreamProtocolError"}

    async def cut_mid_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await server.read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        await writer.drain()

    async with RawServer(cut_mid_body) as server:
        with pytest.raises(UpstreamError) as cut:
            await _forward_whole(client, Upstream(url=server.url))
    assert cut.value.details == {"reason": "UpstreamClosed"}

    closed_port = server.url  # the server is gone: nothing listens there any more
    with pytest.raises(UpstreamError) as refused:
        await _forward_whole(client, Upstream(url=closed_port))
    assert refused.value.details == {"reason": "ConnectionRefusedError"}


async def test_https_upstream() -> None:
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"tls {request.secure}")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "localhost", 0, ssl_context=server_context).start()
    port = runner.addresses[0][1]
    http = UpstreamClient(ssl_context=client_context)
    try:
        reply = await _send(http, f"https://localhost:{port}")
        assert reply.body == b"tls True"
        # The default context trusts only real authorities: a self-signed upstream is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            await _send(UpstreamClient(), f"https://localhost:{port}")
    finally:
        await http.close()
        await runner.cleanup()


def test_the_client_never_sees_hop_by_hop_headers_of_the_upstream() -> None:
    seen = response_headers(
        [
            ("Connection", "close, X-Hop"),
            ("X-Hop", "for the proxy only"),
            ("Keep-Alive", "timeout=5"),
            ("Transfer-Encoding", "chunked"),
            ("X-Kept", "1"),
            ("Set-Cookie", "a=1"),
            ("set-cookie", "b=2"),
        ]
    )
    # Cookies are the upstream's, not for the gateway's customers (SPEC 4).
    assert list(seen.items()) == [("X-Kept", "1")]
    assert list(response_headers([("X-Kept", "1")]).items()) == [("X-Kept", "1")]
