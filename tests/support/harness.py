"""A whole gateway on loopback ports, wired to a test Redis and a test upstream."""

from __future__ import annotations

import json
import tempfile
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from multidict import CIMultiDict
from pydantic import SecretStr

from gateway.app import build_gateway, serving
from gateway.catalog.load import load_catalog
from gateway.catalog.models import Catalog
from gateway.clock import Clock, system_clock
from gateway.context import Gateway
from gateway.settings import Settings

DATA = Path(__file__).parent.parent / "data"
ADMIN_TOKEN = "test-admin-token"


def catalog_for(upstream_url: str, path: Path = DATA / "catalog.yaml") -> Catalog:
    catalog = load_catalog(path)
    upstreams = {
        name: u.model_copy(update={"url": upstream_url}) for name, u in catalog.upstreams.items()
    }
    return catalog.model_copy(update={"upstreams": upstreams})


@dataclass
class Running:
    gw: Gateway
    public: str
    admin: str
    http: aiohttp.ClientSession
    _stack: AsyncExitStack = field(repr=False)

    async def admin_call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", **kwargs.pop("headers", {})}
        async with self.http.request(method, self.admin + path, headers=headers, **kwargs) as r:
            return r.status, (await r.json() if r.content_type == "application/json" else None)

    async def new_customer(self, plan: str = "lite", **extra: Any) -> Customer:
        status, account = await self.admin_call(
            "POST", "/admin/accounts", json={"name": "Test Co", "plan": plan, **extra}
        )
        assert status == 201, account
        org_id = account["org_id"]
        status, key = await self.admin_call("POST", f"/admin/orgs/{org_id}/keys")
        assert status == 201, key
        return Customer(account["id"], org_id, key["id"], key["key"])

    async def call(
        self, method: str, path: str, key: str | None = None, **kwargs: Any
    ) -> tuple[int, CIMultiDict[str], Any]:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.http.request(method, self.public + path, headers=headers, **kwargs) as r:
            body = await r.read()
            try:
                parsed: Any = await r.json(content_type=None) if body else None
            except ValueError:
                parsed = body
            return r.status, CIMultiDict(r.headers), parsed

    def access_lines(self) -> list[dict[str, Any]]:
        """The access log so far: what is buffered is flushed first."""
        self.gw.access_log.flush()
        with open(self.gw.settings.access_log, "rb") as lines:
            return [json.loads(line) for line in lines]

    async def close(self) -> None:
        await self._stack.aclose()


@dataclass(frozen=True)
class Customer:
    account_id: str
    org_id: str
    key_id: str
    key: str


async def start_gateway(
    redis_url: str,
    catalog: Catalog,
    *,
    admin_token: str | None = ADMIN_TOKEN,
    clock: Clock = system_clock,
    **settings: Any,
) -> Running:
    stack = AsyncExitStack()
    settings.setdefault("spool_dir", tempfile.mkdtemp(prefix="gw-spool-"))
    settings.setdefault("access_log", str(Path(tempfile.mkdtemp(prefix="gw-access-")) / "log"))
    gw = build_gateway(
        Settings(
            redis_url=redis_url,
            admin_token=SecretStr(admin_token) if admin_token else None,
            **settings,
        ),
        catalog,
        clock=clock,
    )
    port, admin_port = await stack.enter_async_context(
        serving(gw, host="127.0.0.1", port=0, admin_host="127.0.0.1", admin_port=0)
    )
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    stack.push_async_callback(http.close)
    return Running(gw, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", http, stack)
