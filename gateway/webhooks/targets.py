"""Webhook targets (SPEC 11). A stand-in that checks the scheme only, with the signature of the
webhooks side's real SSRF check, which replaces it."""

from __future__ import annotations

from urllib.parse import urlsplit

from gateway.errors import ValidationFailed


def check_target(url: str, *, allow_private: bool) -> str:
    """The URL if tasks may notify it, else ValidationFailed (field webhook.url)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or len(url) > 2048:
        raise ValidationFailed(
            "webhook.url must be an http:// or https:// URL", details={"field": "webhook.url"}
        )
    return url
