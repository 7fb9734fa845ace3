"""The scripts' pipelined connection (store/resp.py, store/batcher.py) when the network or the
server misbehaves: a connection that goes silent, a server that hangs up after the handshake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from gateway.store.batcher import ScriptBatcher
from gateway.store.scripts import Script

ONE = Script("one", "return 1")


class Relay:
    """A TCP relay in front of a real redis-server. `black_hole()` makes every connection open
    so far swallow what it is sent, without closing, as a dropped route or a dead NAT entry
    does; connections opened afterwards work."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.frozen: list[asyncio.Event] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> Relay:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def black_hole(self) -> None:
        for frozen in self.frozen:
            frozen.set()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.target_port)
        frozen = asyncio.Event()
        self.frozen.append(frozen)

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                if frozen.is_set():
                    await asyncio.Event().wait()  # hold the bytes for good, never close
                writer.write(data)

        await asyncio.gather(
            pump(client_r, server_w), pump(server_r, client_w), return_exceptions=True
        )

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()


@pytest.fixture
async def relay(redis_url: str) -> AsyncIterator[Relay]:
    port = urlsplit(redis_url).port
    assert port is not None
    running = await Relay(port).start()
    yield running
    await running.stop()


async def test_a_silent_connection_is_dropped_after_one_timeout(relay: Relay) -> None:
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{relay.port}/0", decode_responses=True)
    batcher = ScriptBatcher(client, 0.3, scripts=(ONE,))
    try:
        assert await batcher.run(ONE, ["k"], []) == 1
        relay.black_hole()
        with pytest.raises(TimeoutError):
            await batcher.run(ONE, ["k"], [])
        # No FIN ever comes on the old connection; the next call must not wait on it.
        for _ in range(3):
            assert await asyncio.wait_for(batcher.run(ONE, ["k"], []), 1) == 1
    finally:
        await asyncio.wait_for(batcher.aclose(), 2)
        await client.aclose()


async def test_a_server_that_hangs_up_after_the_handshake_does_not_hang_shutdown() -> None:
    async def select_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.read(100)
        writer.write(b"+OK\r\n")  # SELECT accepted, then the server goes (e.g. maxclients)
        writer.close()

    server = await asyncio.start_server(select_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = aioredis.Redis.from_url(f"redis://127.0.0.1:{port}/1", decode_responses=True)
    batcher = ScriptBatcher(client, 0.2)
    try:
        for _ in range(10):
            with pytest.raises(Exception):  # noqa: B017 - any store error; what matters is after
                await batcher.run(ONE, ["k"], [])
        await asyncio.sleep(0.3)  # any batch timer left behind has fired by now
        await asyncio.wait_for(batcher.aclose(), 2)
    finally:
        await client.aclose()
        server.close()
