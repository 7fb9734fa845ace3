"""A fast upstream for benchmarks: ~1 KB of JSON on every path. Usage: upstream.py PORT"""

from __future__ import annotations

import json
import sys

from aiohttp import web

BODY = json.dumps(
    {"success": True, "result": {"text": "x" * 900, "sources": [{"url": "https://example.com/"}]}}
).encode()


async def answer(request: web.Request) -> web.Response:
    await request.read()
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
        loop=uvloop.new_event_loop(),
    )


if __name__ == "__main__":
    main()
