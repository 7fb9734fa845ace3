"""The customer dashboard (SPEC section 9): one page and its assets, served by the gateway."""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from gateway.context import ROUTE

routes = web.RouteTableDef()

_TYPES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
_FILES = {
    name: resources.files(__package__).joinpath(f"static/{name}").read_bytes() for name in _TYPES
}
# Everything comes from this origin; no inline script, no framing by other sites.
_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


@routes.get("/dashboard")
async def page(request: web.Request) -> web.Response:
    request[ROUTE] = "/dashboard"
    return _serve("index.html")


@routes.get("/dashboard/static/{name}")
async def asset(request: web.Request) -> web.Response:
    request[ROUTE] = "/dashboard"
    name = request.match_info["name"]
    if name not in _FILES or name == "index.html":
        raise web.HTTPNotFound()
    return _serve(name)


def _serve(name: str) -> web.Response:
    return web.Response(
        body=_FILES[name], content_type=_TYPES[name], charset="utf-8", headers=_HEADERS
    )
