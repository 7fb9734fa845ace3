"""The baseline: a bare aiohttp reverse proxy, no auth, no Redis. Usage: bare_proxy.py PORT URL"""

from __future__ import annotations

import sys

import aiohttp
from aiohttp import web

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length", "upgrade"}


async def forward(request: web.Request) -> web.Response:
    session: aiohttp.ClientSession = request.app["session"]
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
    async with session.request(
        request.method,
        request.app["upstream"] + request.path_qs,
        headers=headers,
        data=body or None,
    ) as reply:
        content = await reply.read()
        out = {k: v for k, v in reply.headers.items() if k.lower() not in HOP_BY_HOP}
        return web.Response(status=reply.status, body=content, headers=out)


async def session_ctx(app: web.Application):  # type: ignore[no-untyped-def]
    app["session"] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0), auto_decompress=False
    )
    yield
    await app["session"].close()


def main() -> None:
    import uvloop

    app = web.Application()
    app["upstream"] = sys.argv[2]
    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    web.run_app(
        app,
        host="127.0.0.1",
        port=int(sys.argv[1]),
        access_log=None,
        print=None,
        backlog=4096,
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
