"""Pipelining of concurrent script calls: every call made in one event-loop tick leaves in one
round trip. Each caller still runs exactly its own script once; only the trip is shared."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from hiredis import pack_command
from redis.asyncio.connection import BlockingConnectionPool, Connection, ConnectionPool
from redis.exceptions import NoScriptError

from gateway.store.resp import RespPipe, Waiter, open_pipe
from gateway.store.scripts import Script

# A call: its script, keys, arguments, the caller's future, and whether it is sent after an
# ASKING (a Cluster slot being migrated: store/cluster_scripts.py).
_Call = tuple[Script, list[str], list[str | int], "asyncio.Future[Any]", bool]
_ASKING = pack_command(("ASKING",))


class ScriptBatcher:
    """Queues script calls and flushes them as one non-transactional pipeline per loop tick.

    At most `max_in_flight` batches are out at once; while they are, new calls gather into
    the next, bigger one, so a burst makes fewer, larger round trips.

    On a plain Redis server, and on each master of a Cluster (`connection` names it), the
    batches go out pre-packed on one pipelined connection (store/resp.py), each under one
    timer. Other clients (memory store, Sentinel) use redis-py pipelines. `client` also sends
    the EVAL of a script the server does not know."""

    def __init__(
        self,
        client: Any,
        timeout_s: float,
        *,
        scripts: tuple[Script, ...] = (),
        connection: dict[str, Any] | None = None,
        max_batch: int = 512,
        max_in_flight: int = 8,
    ) -> None:
        self._client = client
        self._scripts = scripts
        self._timeout_s = timeout_s
        self._max_batch = max_batch
        self._max_in_flight = max_in_flight
        self._pending: list[_Call] = []
        self._scheduled = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._connection_kwargs = connection or _plain_redis(client)
        self._pipe: RespPipe | None = None
        self._connecting: asyncio.Task[RespPipe] | None = None

    async def run(
        self, script: Script, keys: list[str], args: list[str | int], *, asking: bool = False
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((script, keys, args, future, asking))
        if len(self._pending) >= self._max_batch:
            self._flush()
        else:
            self._schedule()
        return await future

    def _schedule(self) -> None:
        if self._pending and not self._scheduled and self._in_flight < self._max_in_flight:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        if not self._pending or self._in_flight >= self._max_in_flight:
            return  # a finishing batch flushes what gathered meanwhile
        batch, self._pending = self._pending[: self._max_batch], self._pending[self._max_batch :]
        self._in_flight += 1
        self._idle.clear()
        if self._pipe is not None and not self._pipe.closed:
            self._write(self._pipe, batch)
        else:
            self._spawn(self._send(batch))

    def _write(self, pipe: RespPipe, batch: list[_Call]) -> None:
        """Hot path: one write, one timer; replies come back through _Batch.resolve."""
        out = _Batch(self, batch)
        commands: list[bytes] = []
        waiters: list[Waiter] = []
        for script, keys, args, _, asking in batch:
            if asking:  # its +OK goes nowhere; the call's own reply follows
                commands.append(_ASKING)
                waiters.append(_IGNORED)
            commands.append(
                pack_command(cast(Any, ("EVALSHA", script.sha, len(keys), *keys, *args)))
            )
            waiters.append(out)
        pipe.write(b"".join(commands), waiters)  # raises, queueing nothing, if the pipe closed
        out.start_timer(pipe)

    async def _send(self, batch: list[_Call]) -> None:
        try:
            if self._connection_kwargs is not None:
                self._write(await self._open(), batch)
                return  # the batch finishes itself, through its replies or its timer
            async with asyncio.timeout(self._timeout_s):
                pipe = self._client.pipeline(transaction=False)
                for script, keys, args, *_ in batch:
                    pipe.evalsha(script.sha, len(keys), *keys, *args)
                replies = await pipe.execute(raise_on_error=False)
            for call, reply in zip(batch, replies, strict=True):
                self._answer(call, reply)
        except Exception as exc:
            for call in batch:
                _resolve(call[3], exc)
        self._batch_done()

    async def _open(self) -> RespPipe:
        """The pipelined connection, opened once for every batch that waits on it."""
        if self._connecting is None:
            assert self._connection_kwargs is not None
            self._connecting = asyncio.create_task(
                open_pipe(self._connection_kwargs, self._timeout_s, self._scripts)
            )
        connecting = self._connecting
        try:
            self._pipe = await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None
        return self._pipe

    def _answer(self, call: _Call, reply: Any) -> None:
        if isinstance(reply, NoScriptError):
            self._eval_later(call)
        else:
            _resolve(call[3], reply)

    def _eval_later(self, call: _Call) -> None:
        """The server lost its script cache (a restart, SCRIPT FLUSH): EVAL sends the body."""
        script, keys, args, future, _ = call

        async def evaluate() -> None:
            try:
                async with asyncio.timeout(self._timeout_s):
                    reply = await self._client.eval(script.body, len(keys), *keys, *args)
            except Exception as exc:
                reply = exc
            _resolve(future, reply)

        self._spawn(evaluate())

    def _spawn(self, work: Any) -> None:
        task = asyncio.create_task(work)
        # Keep a reference: the loop only holds weak ones to running tasks.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _batch_done(self) -> None:
        self._in_flight -= 1
        if not self._in_flight:
            self._idle.set()
        self._schedule()

    async def aclose(self) -> None:
        """Wait for batches already sent and queued, so that no settle is lost at shutdown."""
        while self._pending or self._in_flight or self._tasks:
            self._flush()
            await self._idle.wait()
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._pipe is not None:
            self._pipe.close()
            self._pipe = None


class _Ignored:
    __slots__ = ()

    def resolve(self, reply: Any) -> None:
        pass


_IGNORED = _Ignored()


class _Batch:
    """One batch on the pipe. Its replies arrive in order, one per call; a timer bounds the
    wait for all of them. When it fires, the connection is dropped: a store that has not
    answered in time may never answer on it (a black-holed connection sends no FIN), and the
    next batch connects afresh, as redis-py does after a timeout."""

    __slots__ = ("_calls", "_done", "_next", "_owner", "_pipe", "_timer")

    def __init__(self, owner: ScriptBatcher, calls: list[_Call]) -> None:
        self._owner = owner
        self._calls = calls
        self._next = 0
        self._done = False
        self._pipe: RespPipe | None = None
        self._timer: asyncio.TimerHandle | None = None

    def start_timer(self, pipe: RespPipe) -> None:
        self._pipe = pipe
        self._timer = asyncio.get_running_loop().call_later(self._owner._timeout_s, self._expire)

    def resolve(self, reply: Any) -> None:
        self._owner._answer(self._calls[self._next], reply)
        self._next += 1
        if self._next == len(self._calls):
            if self._timer is not None:
                self._timer.cancel()
            self._finish()

    def _expire(self) -> None:
        for call in self._calls[self._next :]:
            _resolve(call[3], TimeoutError())
        self._finish()
        if self._pipe is not None:
            self._pipe.abort()

    def _finish(self) -> None:
        if not self._done:
            self._done = True
            self._owner._batch_done()


def _plain_redis(client: Any) -> dict[str, Any] | None:
    """The connection settings of a plain TCP Redis pool; None for any other client."""
    pool = getattr(client, "connection_pool", None)
    if (
        pool is not None
        and type(pool) in (ConnectionPool, BlockingConnectionPool)
        and pool.connection_class is Connection
    ):
        return cast(dict[str, Any], pool.connection_kwargs)
    return None


def _resolve(future: asyncio.Future[Any], reply: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile, or its batch timed out
        return
    if isinstance(reply, BaseException):
        future.set_exception(reply)
    else:
        future.set_result(reply)
