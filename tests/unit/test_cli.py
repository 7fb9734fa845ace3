"""The CLI: flags override GATEWAY_* variables; bad settings are reported, not raised."""

from __future__ import annotations

import pytest

from gateway.cli import _parser, _settings, main


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_PORT", "7000")
    monkeypatch.setenv("GATEWAY_ADMIN_PORT", "7001")
    monkeypatch.setenv("GATEWAY_REDIS_URL", "redis://from-env:6379/0")
    args = _parser().parse_args(["serve", "--port", "8000", "--redis-url", "memory://"])
    settings = _settings(args)
    assert settings.port == 8000  # the flag wins
    assert settings.redis_url == "memory://"
    assert settings.admin_port == 7001  # no flag: the environment applies


def test_a_bad_setting_exits_2_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_REDIS_MODE", "galaxy")
    assert main(["serve"]) == 2
    assert "GATEWAY_REDIS_MODE" in capsys.readouterr().err


def test_a_bad_catalog_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "tests/data/bad/unknown_upstream.yaml"]) == 1
    assert "routes[1].upstream: unknown upstream" in capsys.readouterr().err
