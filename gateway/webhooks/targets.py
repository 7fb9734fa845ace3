"""Where a webhook may go (SPEC 11, targets): the URL rules, and the SSRF guard at connect time.

A URL is checked twice. At task creation (`check_target`): http(s), at most 2048 characters, no
user-info, and a host that is not, and does not resolve to, a forbidden address. At every
delivery the delivery client (`WebhookConnector`) checks every address the name resolves to,
and then the very address each socket is about to connect to, before anything is sent: DNS
that answers differently the second time (rebinding) cannot reach the admin listener or Redis.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import Callable
from typing import Any, NoReturn
from urllib.parse import SplitResult, urlsplit

from aiohappyeyeballs import AddrInfoType
from aiohttp import TCPConnector
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

from gateway.errors import ValidationFailed

MAX_URL_LENGTH = 2048
FIELD = "webhook.url"
_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")

AllowPrivate = Callable[[], bool]


class ForbiddenAddress(OSError):
    """A webhook target is, or resolves to, an address deliveries must not reach."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)  # so clients report the message itself


def forbidden(address: str) -> bool:
    """Whether deliveries must not reach `address` (an IP literal; a zone id is ignored):
    loopback, private, link-local, unique-local, multicast (checked apart: `ipaddress` calls
    some multicast ranges global), reserved, unspecified, or anything else not global (shared
    100.64/10 included). IPv4 embedded in IPv6 (mapped, 6to4) is judged as IPv4."""
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(
            address.split("%", 1)[0]
        )
    except ValueError:
        return True  # not an address we can judge: refuse
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _UNIQUE_LOCAL:
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is not None:
            ip = embedded
    return (
        ip.is_loopback
        or ip.is_private
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
        or not ip.is_global
    )


def check_url(url: str) -> SplitResult:
    """The rules that need no DNS: http(s), length, no user-info, a host, a valid port."""
    if not isinstance(url, str) or not url:
        _refuse("must be an http:// or https:// URL")
    if len(url) > MAX_URL_LENGTH:
        _refuse(f"must be at most {MAX_URL_LENGTH} characters", max_length=MAX_URL_LENGTH)
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        _refuse("must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError on a port out of range
    except ValueError:
        _refuse("is not a valid URL")
    if parts.scheme not in ("http", "https"):
        _refuse("must be an http:// or https:// URL")
    if "@" in parts.netloc:
        _refuse("must not carry user-info (user:password@)")
    if not parts.hostname:
        _refuse("must name a host")
    return parts


def check_target(url: str, *, allow_private: bool) -> str:
    """The URL if deliveries may go there, else ValidationFailed (details.field webhook.url).

    Resolves the host (blocking: call it through `verify_target` from the event loop). A name
    that does not resolve now is accepted: each delivery resolves and checks again."""
    parts = check_url(url)
    if allow_private:
        return url
    host = parts.hostname or ""
    if _is_literal(host):
        if forbidden(host):
            _refuse("must not point at a private, loopback or reserved address")
        return url
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return url
    if any(forbidden(str(info[4][0])) for info in infos):
        _refuse("must not resolve to a private, loopback or reserved address")
    return url


async def verify_target(url: str, *, allow_private: bool) -> str:
    """`check_target` off the event loop (its DNS lookup blocks)."""
    return await asyncio.to_thread(check_target, url, allow_private=allow_private)


def check_literal(url: str, *, allow_private: bool) -> SplitResult:
    """What a delivery checks before connecting: the URL rules, and an IP literal host. Names
    are checked by the connector, on the addresses they resolve to."""
    parts = check_url(url)
    host = parts.hostname or ""
    if not allow_private and _is_literal(host) and forbidden(host):
        _refuse("must not point at a private, loopback or reserved address")
    return parts


class CheckedResolver(AbstractResolver):
    """Resolves with `inner`, then refuses a name when any of its addresses is forbidden."""

    def __init__(self, allow_private: AllowPrivate, inner: AbstractResolver | None = None):
        self._allow_private = allow_private
        self._inner = inner if inner is not None else ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if not self._allow_private() and any(forbidden(r["host"]) for r in results):
            raise ForbiddenAddress(f"webhook target {host} resolves to a forbidden address")
        return results

    async def close(self) -> None:
        await self._inner.close()


class WebhookConnector(TCPConnector):
    """The delivery client's connector: every resolved address is checked, and each socket's
    destination again right before it connects (no SYN to a forbidden address). A new
    connection per delivery, so every delivery is checked; no DNS cache to outlive a check."""

    def __init__(
        self, allow_private: AllowPrivate, resolver: AbstractResolver | None = None, **kw: Any
    ) -> None:
        super().__init__(
            resolver=resolver if resolver is not None else CheckedResolver(allow_private),
            use_dns_cache=False,
            force_close=True,
            socket_factory=_guarded_socket(allow_private),
            **kw,
        )


def _guarded_socket(allow_private: AllowPrivate) -> Callable[[AddrInfoType], socket.socket]:
    def make(addr_info: AddrInfoType) -> socket.socket:
        family, kind, proto, _, address = addr_info
        if not allow_private() and forbidden(str(address[0])):
            raise ForbiddenAddress(f"refused to connect to forbidden address {address[0]}")
        return socket.socket(family=family, type=kind, proto=proto)

    return make


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def _refuse(message: str, **details: Any) -> NoReturn:
    raise ValidationFailed(f"webhook.url: {message}", details={"field": FIELD, **details})
