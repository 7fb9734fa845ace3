"""A real HTTP upstream on loopback that records what reached it.

Behaviour is chosen per request by query parameters the gateway passes through:
`sleep` (seconds), `status` (HTTP status), `size` (bytes of JSON filler); or, for a request
without a query (an async task's), by the same names in its JSON body."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from dataclasses import dataclass, field

from aiohttp import web
from multidict import CIMultiDict


@dataclass
class Seen:
    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes


@dataclass
class RecordingUpstream:
    requests: list[Seen] = field(default_factory=list)
    in_flight: Counter[str] = field(default_factory=Counter)
    max_in_flight: Counter[str] = field(default_factory=Counter)
    runner: web.AppRunner | None = None
    url: str = ""

    async def start(self) -> RecordingUpstream:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        # A gateway that gives up on a request closes the connection: stop "working" then.
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    def paths(self) -> list[str]:
        return [seen.path_qs for seen in self.requests]

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append(
            Seen(request.method, request.path_qs, CIMultiDict(request.headers), body)
        )
        org = request.headers.get("X-Gateway-Org", "-")
        asked = _asked(request, body)
        self.in_flight[org] += 1
        self.max_in_flight[org] = max(self.max_in_flight[org], self.in_flight[org])
        try:
            await asyncio.sleep(float(asked.get("sleep", 0)))
        finally:
            self.in_flight[org] -= 1
        status = int(asked.get("status", 200))
        payload = {
            "success": 200 <= status < 300,
            "path": request.path,
            "filler": "x" * int(asked.get("size", 0)),
        }
        return web.Response(
            status=status,
            body=json.dumps(payload).encode(),
            content_type="application/json",
            headers={"X-Upstream": "yes", "Connection": "keep-alive"},
        )


def _asked(request: web.Request, body: bytes) -> dict[str, object]:
    if request.query or not body:
        return dict(request.query)
    try:
        document = json.loads(body)
    except ValueError:
        return {}
    return document if isinstance(document, dict) else {}
