"""Webhook targets (the URL rules, the forbidden addresses) and signing, as pure code."""

from __future__ import annotations

import ipaddress
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import ValidationFailed
from gateway.webhooks import signing
from gateway.webhooks.targets import MAX_URL_LENGTH, check_target, forbidden

ROOT = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- targets

PUBLIC = "http://93.184.216.34"  # a global address: no DNS needed


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("ftp://93.184.216.34/hook", id="ftp"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("file:///etc/passwd", id="file"),
        pytest.param("93.184.216.34/hook", id="no scheme"),
        pytest.param("", id="empty"),
        pytest.param("http:///hook", id="no host"),
        pytest.param("http://user:secret@93.184.216.34/", id="user-info"),
        pytest.param("http://user@93.184.216.34/", id="user"),
        pytest.param("http://@93.184.216.34/", id="empty user-info"),
        pytest.param("http://93.184.216.34:99999/", id="bad port"),
        pytest.param("http://93.184.216.34/a b", id="space"),
        pytest.param("http://93.184.216.34/\r\nX: 1", id="CRLF"),
        pytest.param(PUBLIC + "/" + "a" * (MAX_URL_LENGTH - len(PUBLIC)), id="2049 chars"),
        pytest.param("http://127.0.0.1:9090/admin/accounts", id="loopback"),
        pytest.param("http://127.1/", id="short loopback"),
        pytest.param("http://[::1]:6379/", id="v6 loopback"),
        pytest.param("http://10.1.2.3/", id="private 10"),
        pytest.param("http://172.16.0.1/", id="private 172"),
        pytest.param("http://192.168.1.1/", id="private 192"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local (metadata)"),
        pytest.param("http://[fe80::1]/", id="v6 link-local"),
        pytest.param("http://[fd12:3456::1]/", id="unique-local"),
        pytest.param("http://224.0.1.1/", id="multicast ipaddress calls global"),
        pytest.param("http://[ff0e::1]/", id="v6 global multicast"),
        pytest.param("http://240.0.0.1/", id="reserved"),
        pytest.param("http://0.0.0.0:9090/", id="unspecified"),
        pytest.param("http://[::]/", id="v6 unspecified"),
        pytest.param("http://[::ffff:127.0.0.1]/", id="v4-mapped loopback"),
        pytest.param("http://[::ffff:a9fe:a9fe]/", id="v4-mapped link-local"),
        pytest.param("http://[2002:7f00:1::]/", id="6to4 of loopback"),
        pytest.param("http://100.64.0.1/", id="shared (CGNAT)"),
        pytest.param("http://localhost:6379/", id="name of loopback"),
    ],
)
def test_a_forbidden_webhook_url_is_refused_naming_the_field(url: str) -> None:
    with pytest.raises(ValidationFailed) as caught:
        check_target(url, allow_private=False)
    assert caught.value.details["field"] == "webhook.url"
    assert caught.value.status == 400


@pytest.mark.parametrize(
    "url",
    [
        PUBLIC + "/hook",
        "https://93.184.216.34:8443/hooks/tasks?token=abc#frag",
        "HTTPS://93.184.216.34/",
        "http://[2606:4700:4700::1111]/hook",
        PUBLIC + "/" + "a" * (MAX_URL_LENGTH - len(PUBLIC) - 1),  # exactly 2048
    ],
)
def test_a_public_webhook_url_is_accepted_as_given(url: str) -> None:
    assert check_target(url, allow_private=False) == url


def test_allow_private_lets_loopback_through_but_not_the_url_rules() -> None:
    assert check_target("http://127.0.0.1:8000/hook", allow_private=True)
    assert check_target("http://localhost:8000/hook", allow_private=True)
    for url in ("ftp://127.0.0.1/", "http://u:p@127.0.0.1/", "http://127.0.0.1/" + "a" * 2048):
        with pytest.raises(ValidationFailed):
            check_target(url, allow_private=True)


@given(st.ip_addresses(v=4))
def test_an_ipv4_address_is_judged_the_same_when_mapped_into_ipv6(ip: Any) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{ip}")
    assert forbidden(str(mapped)) == forbidden(str(ip))


@given(st.ip_addresses())
def test_only_global_unicast_addresses_are_allowed(ip: Any) -> None:
    # Multicast is refused even where `ipaddress` calls it global.
    if not forbidden(str(ip)):
        assert ip.is_global and not ip.is_multicast


# --------------------------------------------------------------------------- signing


def documented_verify() -> Callable[..., bool]:
    """The receiver's `verify` exactly as README.md documents it."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Webhooks") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert snippet is not None, "README.md's Webhooks section has no Python snippet"
    scope: dict[str, Any] = {}
    exec(compile(snippet.group(1), "README.md", "exec"), scope)
    verify: Callable[..., bool] = scope["verify"]
    return verify


VERIFY = documented_verify()


def delivery_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return signing.signed_headers("X-Cloro-", secret, timestamp, body)


@given(
    secret=st.one_of(st.just(signing.new_secret()), st.text(min_size=1).map("whsec_".__add__)),
    body=st.binary(max_size=4096),
    skew=st.integers(min_value=-250, max_value=250),
)
def test_a_signed_delivery_verifies_with_the_documented_snippet(
    secret: str, body: bytes, skew: int
) -> None:
    timestamp = int(time.time()) + skew
    assert VERIFY(secret, delivery_headers(secret, timestamp, body), body)


@given(body=st.binary(min_size=1, max_size=512), flip=st.integers(min_value=0, max_value=511))
def test_a_changed_body_or_another_secret_does_not_verify(body: bytes, flip: int) -> None:
    secret, other = signing.new_secret(), signing.new_secret()
    headers = delivery_headers(secret, int(time.time()), body)
    changed = bytearray(body)
    changed[flip % len(body)] ^= 0x01
    assert not VERIFY(secret, headers, bytes(changed))
    assert not VERIFY(other, headers, body)


def test_an_old_signature_is_refused_as_a_replay() -> None:
    secret, body = signing.new_secret(), b'{"task": {}}'
    assert not VERIFY(secret, delivery_headers(secret, int(time.time()) - 3600, body), body)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_keyed_by_the_whole_secret() -> None:
    # A known answer, computed apart: `printf 1700000000.{} | openssl dgst -sha256 -hmac whsec_test`
    assert signing.signature("whsec_test", 1700000000, b"{}") == (
        "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
    )


def test_secrets_are_whsec_and_unguessable() -> None:
    secrets = {signing.new_secret() for _ in range(100)}
    assert len(secrets) == 100
    assert all(re.fullmatch(r"whsec_[0-9A-Za-z]{32}", s) for s in secrets)
