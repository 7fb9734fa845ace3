"""`gateway serve | demo | check-config`: parse flags, build Settings, run."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import secrets
import signal
import sys
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from pydantic import SecretStr, ValidationError

from gateway.app import build_gateway, serving
from gateway.catalog.load import load_catalog
from gateway.catalog.models import Catalog
from gateway.context import Gateway
from gateway.errors import CatalogInvalid
from gateway.logs import configure
from gateway.reload import reload_catalog
from gateway.settings import Settings
from gateway.supervisor import Supervisor


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "check-config":
        return check_config(args.path)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            where = ".".join(str(p) for p in error["loc"])
            print(f"GATEWAY_{where.upper()}: {error['msg']}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format if args.command == "serve" else "text")
    try:
        catalog = load_catalog(settings.config)
    except CatalogInvalid as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 1
    if args.command == "serve" and settings.workers > 1:
        return Supervisor(_worker_argv(argv), settings.workers).run()
    _install_uvloop()
    runner = serve if args.command == "serve" else demo
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(runner(settings, catalog))
    except OSError as exc:  # a port already taken, above all (ports are exclusive: SPEC 1)
        print(f"gateway: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def check_config(path: str) -> int:
    """Like `nginx -t`: exit 0, or 1 with one `location: message` line per problem."""
    try:
        catalog = load_catalog(path)
    except CatalogInvalid as exc:
        print("\n".join(exc.problems))
        return 1
    print(
        f"{path}: ok ({len(catalog.routes)} routes, {len(catalog.plans)} plans, "
        f"version {catalog.version})"
    )
    return 0


async def serve(settings: Settings, catalog: Catalog) -> None:
    gw = build_gateway(settings, catalog)
    async with serving(
        gw,
        host=settings.host,
        port=settings.port,
        admin_host=settings.admin_host,
        admin_port=settings.admin_port,
    ):
        await _until_stopped(gw)


async def demo(settings: Settings, catalog: Catalog) -> None:
    """Embedded store, demo upstream, seeded account/org/key printed with a curl line."""
    from gateway.demo.upstream import create_upstream_app

    upstream = web.AppRunner(create_upstream_app(), access_log=None)
    await upstream.setup()
    await web.TCPSite(upstream, "127.0.0.1", 0).start()
    upstream_url = f"http://127.0.0.1:{upstream.addresses[0][1]}"

    def to_demo_upstream(loaded: Catalog) -> Catalog:
        upstreams = {
            name: u.model_copy(update={"url": upstream_url}) for name, u in loaded.upstreams.items()
        }
        update: dict[str, Any] = {"upstreams": upstreams}
        if loaded.async_ is not None:  # webhooks to loopback receivers are fine in a demo
            hooks = loaded.async_.webhooks.model_copy(update={"allow_private_targets": True})
            update["async_"] = loaded.async_.model_copy(update={"webhooks": hooks})
        return loaded.model_copy(update=update)

    token = settings.admin_token or SecretStr(secrets.token_urlsafe(24))
    settings = settings.model_copy(
        update={"redis_url": "memory://", "admin_token": token, "log_format": "text"}
    )
    gw = build_gateway(settings, catalog, prepare_catalog=to_demo_upstream)
    try:
        async with serving(
            gw,
            host=settings.host,
            port=settings.port,
            admin_host=settings.admin_host,
            admin_port=settings.admin_port,
        ) as (port, admin_port):
            plans = gw.catalog.current.catalog.plans
            plan = min(plans, key=lambda name: plans[name].price_cents)
            record = await gw.accounts.create_public(
                name="Demo customer",
                plan_name=plan,
                plan=plans[plan],
                anchor=gw.clock(),
                now=gw.clock(),
            )
            created = await gw.accounts.create_key(record.orgs[0].id, gw.clock())
            assert created is not None
            _, key = created
            base = f"http://127.0.0.1:{port}"
            print(
                "gateway demo is running (in-memory store, demo upstream).\n"
                f"  account {record.id} on plan {plan}, org {record.orgs[0].id}\n"
                f"  API key:     {key}\n"
                f"  try:         curl -s -X POST {base}/v1/monitor/chatgpt "
                f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                '-d \'{"prompt": "best running shoes"}\' -i\n'
                f"  async task:  curl -s -X POST {base}/v1/async/task "
                f"-H 'Authorization: Bearer {key}' -H 'Content-Type: application/json' "
                '-d \'{"taskType": "CHATGPT", "payload": {"prompt": "best running shoes"}}\'\n'
                f"  credits:     curl -s {base}/v1/credits -H 'Authorization: Bearer {key}'\n"
                f"  dashboard:   {base}/dashboard (sign in with the key)\n"
                f"  admin:       curl -s http://127.0.0.1:{admin_port}/admin/accounts/{record.id}"
                f" -H 'Authorization: Bearer {token.get_secret_value()}'\n"
                "Press Ctrl-C to stop.",
                flush=True,
            )
            await _until_stopped(gw)
    finally:
        await upstream.cleanup()


async def _until_stopped(gw: Gateway) -> None:
    """Serve until SIGINT or SIGTERM; SIGHUP reloads the catalog and reopens the access log."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, _reload_quietly, gw)
    await stop.wait()


def _reload_quietly(gw: Gateway) -> None:
    # A bad file is logged and counted by reload_catalog; the old catalog stays.
    with contextlib.suppress(CatalogInvalid):
        reload_catalog(gw)
    gw.access_log.reopen()  # after a rotation: a new file at the same path


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {
        name: value
        for name, value in {
            "config": args.config,
            "port": args.port,
            "admin_port": args.admin_port,
            "redis_url": args.redis_url,
            "workers": args.workers,
        }.items()
        if value is not None
    }
    return Settings(**overrides)


def _worker_argv(argv: Sequence[str] | None) -> list[str]:
    """The parent's own arguments minus --workers: each worker serves alone."""
    args = list(sys.argv[1:] if argv is None else argv)
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg == "--workers":
            skip = True
            continue
        if arg.startswith("--workers="):
            continue
        out.append(arg)
    return out


def _install_uvloop() -> None:
    try:
        import uvloop
    except ImportError:  # not on Linux: the stock loop works, only slower
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (("serve", "run the gateway"), ("demo", "run the embedded demo")):
        command = commands.add_parser(name, help=text)
        command.add_argument("--config", help="catalog path (GATEWAY_CONFIG)")
        command.add_argument("--port", type=int, help="public port (GATEWAY_PORT)")
        command.add_argument("--admin-port", type=int, help="admin port (GATEWAY_ADMIN_PORT)")
        command.add_argument(
            "--redis-url", help="redis://, rediss:// or memory:// (GATEWAY_REDIS_URL)"
        )
        command.add_argument("--workers", type=int, help="processes (GATEWAY_WORKERS)")
    check = commands.add_parser("check-config", help="validate a catalog file")
    check.add_argument("path")
    return parser
