"""A fast upstream for benchmarks: ~1 KB of JSON on every path. Usage: upstream.py PORT"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from aiohttp import web

BODY = json.dumps(
    {"success": True, "result": {"text": "x" * 900, "sources": [{"url": "https://example.com/"}]}}
).encode()


async def answer(request: web.Request) -> web.Response:
    await request.read()
    until = request.query.get("until")  # hold the request until this epoch second
    if until is not None:
        await asyncio.sleep(max(0.0, float(until) - time.time()))
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    import uvloop

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
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
