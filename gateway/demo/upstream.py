"""A stand-in for cloro's scrapers: answers every monitor route with cloro-shaped JSON."""

from __future__ import annotations

import json
import time

from aiohttp import web

routes = web.RouteTableDef()


@routes.post("/v1/monitor/{engine:.+}")
async def monitor(request: web.Request) -> web.Response:
    try:
        body = json.loads(await request.read() or b"{}")
    except ValueError:
        body = {}
    prompt = body.get("prompt") or body.get("query") or "" if isinstance(body, dict) else ""
    engine = request.match_info["engine"]
    return web.json_response(
        {
            "success": True,
            "result": {
                "engine": engine,
                "prompt": prompt,
                "text": f"Demo answer from the {engine} monitor for: {prompt or 'your prompt'}",
                "sources": [{"position": 1, "url": "https://example.com/", "title": "Example"}],
                "scrapedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        }
    )


@routes.get("/v1/countries")
async def countries(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "success": True,
            "result": [{"code": "US", "name": "United States"}, {"code": "DE", "name": "Germany"}],
        }
    )


@routes.get("/v1/states")
async def states(request: web.Request) -> web.Response:
    return web.json_response({"success": True, "result": [{"code": "CA", "name": "California"}]})


def create_upstream_app() -> web.Application:
    app = web.Application()
    app.add_routes(routes)
    return app


def main() -> None:
    """`python -m gateway.demo.upstream --port 9000`: the demo upstream on its own."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    args = parser.parse_args()
    web.run_app(create_upstream_app(), host=args.host, port=args.port, access_log=None)


if __name__ == "__main__":
    main()
