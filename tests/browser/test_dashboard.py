"""The dashboard in a real browser: Playwright drives Debian's Chromium, headless, against a
gateway on a real redis-server."""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from gateway.store import keys
from tests.support.harness import Customer, Running
from tests.support.upstream import RecordingUpstream

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "test-output" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    assert Path(CHROMIUM).exists(), "chromium is missing: `make test` installs it"
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield launched
        await launched.close()


@pytest.fixture
async def page(browser: Browser, gateway: Running) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    opened = await context.new_page()
    origins: list[str] = []
    opened.on("request", lambda request: origins.append(request.url))
    opened.origins = origins  # type: ignore[attr-defined]
    yield opened
    await context.close()
    own = urlsplit(gateway.public)
    assert origins, "the page made no request"
    for url in origins:  # every request the page made went to the gateway's own origin
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc) == (own.scheme, own.netloc), url


async def sign_in(page: Page, gateway: Running, key: str) -> None:
    await page.goto(gateway.public + "/dashboard")
    await page.get_by_label("API key").fill(key)
    await page.get_by_test_id("sign-in").click()


async def test_sign_in_shows_what_the_api_says(page: Page, gateway: Running) -> None:
    c = await gateway.new_customer("lite")
    await gateway.call("POST", "/v1/monitor/flat", c.key)
    _, _, credits = await gateway.call("GET", "/v1/credits", c.key)
    _, _, account = await gateway.call("GET", "/v1/account", c.key)
    await sign_in(page, gateway, c.key)
    await expect(page.get_by_test_id("credits-remaining")).to_have_text(f"{credits['remaining']:,}")
    await expect(page.get_by_test_id("plan")).to_have_text(account["plan"])
    await expect(page.get_by_test_id("status")).to_have_text("active")
    await expect(page.get_by_test_id("concurrency")).to_have_text("0 / 10")
    await expect(page.get_by_test_id("cycle")).to_contain_text(account["cycle"]["start"][:10])
    # The key lives in sessionStorage only: not in the URL, not in a cookie.
    assert c.key not in page.url
    assert await page.context.cookies() == []
    assert await page.evaluate("sessionStorage.getItem('gateway.apiKey')") == c.key
    await page.get_by_test_id("sign-out").click()
    await expect(page.get_by_test_id("sign-in")).to_be_visible()
    assert await page.evaluate("sessionStorage.getItem('gateway.apiKey')") is None


async def test_requests_appear_after_a_reload_and_the_chart_has_data(
    page: Page, gateway: Running
) -> None:
    c = await gateway.new_customer("lite")
    await sign_in(page, gateway, c.key)
    await expect(page.get_by_test_id("recent-requests")).to_contain_text("Nothing yet")
    for _ in range(3):
        await gateway.call("POST", "/v1/monitor/flat", c.key)
    await gateway.call("POST", "/v1/monitor/chatgpt", c.key, json={"pages": 2})
    await page.reload()  # the key survives a reload of the tab
    rows = page.get_by_test_id("recent-requests").locator("tbody tr")
    await expect(rows).to_have_count(4)
    await expect(rows.first).to_contain_text("/v1/monitor/chatgpt")
    await expect(page.get_by_test_id("recent-requests")).to_contain_text("/v1/monitor/flat")
    bars = page.get_by_test_id("usage-chart").locator("rect.bar")
    await expect(bars).to_have_count(2)  # today, stacked: two routes
    await expect(page.get_by_test_id("usage-chart").locator("polyline.balance")).to_have_count(1)
    await expect(page.locator("#chart-legend")).to_contain_text("/v1/monitor/chatgpt")


async def test_upgrade_through_the_page(page: Page, gateway: Running) -> None:
    c = await gateway.new_customer("lite")
    await sign_in(page, gateway, c.key)
    await page.get_by_label("Change plan to").select_option("hobby")
    await page.get_by_test_id("change-plan").click()
    confirmation = page.get_by_test_id("confirm-text")
    await expect(confirmation).to_contain_text("You will be charged $")
    shown = re.search(r"\$(\d+\.\d\d)", await confirmation.inner_text())
    assert shown is not None
    _, _, preview = await gateway.call(
        "POST", "/v1/account/subscription/preview", c.key, json={"plan": "hobby"}
    )
    assert shown.group(1) == f"{preview['charge_cents'] / 100:.2f}"
    await page.get_by_test_id("confirm-change").click()
    await expect(page.get_by_test_id("plan")).to_have_text("hobby")
    history = page.get_by_test_id("billing-history").locator("tbody tr").first
    await expect(history).to_contain_text("upgrade")
    await expect(history).to_contain_text(f"${shown.group(1)}")
    _, _, billing = await gateway.call("GET", "/v1/account/billing", c.key)
    assert billing["entries"][0]["type"] == "upgrade"
    assert billing["entries"][0]["amount_cents"] == preview["charge_cents"]


async def test_cancel_then_reactivate_through_the_page(page: Page, gateway: Running) -> None:
    c = await gateway.new_customer("lite")
    await sign_in(page, gateway, c.key)
    await page.get_by_test_id("cancel").click()
    await expect(page.get_by_test_id("status")).to_have_text("canceling")
    await expect(page.get_by_test_id("reactivate")).to_be_visible()
    await page.get_by_test_id("reactivate").click()
    await expect(page.get_by_test_id("status")).to_have_text("active")
    _, _, billing = await gateway.call("GET", "/v1/account/billing", c.key)
    assert [e["type"] for e in billing["entries"][:2]] == ["reactivated", "cancel_scheduled"]


async def test_keyboard_only_sign_in_and_a_wrong_key(page: Page, gateway: Running) -> None:
    await page.goto(gateway.public + "/dashboard")
    await page.keyboard.press("Tab")  # sign-out is hidden: the key field is first
    await expect(page.get_by_test_id("api-key")).to_be_focused()
    await page.keyboard.type("sk_live_" + "w" * 32)
    await page.keyboard.press("Enter")
    error = page.get_by_role("alert")
    await expect(error).to_contain_text("INVALID_API_KEY")
    await expect(page.get_by_test_id("plan")).to_be_hidden()
    assert await page.get_by_test_id("credits-remaining").inner_text() == ""


async def test_webhook_signing_enable_rotate_disable_showing_each_secret_once(
    page: Page, gateway: Running
) -> None:
    c = await gateway.new_customer("lite")

    async def stored() -> str | None:
        secret = await gateway.gw.client.hget(keys.webhook_secret(c.account_id, c.org_id), "secret")
        return None if secret is None else str(secret)

    await sign_in(page, gateway, c.key)
    panel = page.get_by_test_id("webhook-signing")
    status, shown = panel.get_by_test_id("webhook-status"), panel.get_by_test_id("webhook-secret")
    await expect(status).to_have_text("off")
    await expect(panel.get_by_test_id("webhook-rotate")).to_be_hidden()
    await panel.get_by_test_id("webhook-enable").click()
    await expect(status).to_have_text("on")
    await expect(shown).to_have_text(re.compile(r"^whsec_[0-9A-Za-z]{32}$"))
    first = await shown.inner_text()
    assert first == await stored()  # the very secret deliveries are signed with
    _, _, settings = await gateway.call("GET", "/v1/webhooks", c.key)
    assert settings["signing"] is True
    # Shown once: a reload still says "on" but the secret is gone from the page.
    await page.reload()
    await expect(status).to_have_text("on")
    await expect(shown).to_be_hidden()
    assert first not in await page.content()
    await panel.get_by_test_id("webhook-rotate").click()
    await expect(shown).to_have_text(re.compile(r"^whsec_"))
    await expect(shown).not_to_have_text(first)
    second = await shown.inner_text()
    assert second == await stored()
    await panel.get_by_test_id("webhook-disable").click()
    await expect(status).to_have_text("off")
    await expect(shown).to_be_hidden()
    await expect(panel.get_by_test_id("webhook-enable")).to_be_visible()
    assert await stored() is None
    _, _, settings = await gateway.call("GET", "/v1/webhooks", c.key)
    assert settings == {"signing": False, "created_at": None}
    storage = await page.evaluate("JSON.stringify([sessionStorage, localStorage])")
    assert first not in storage and second not in storage


@pytest.mark.parametrize("width", [390, 1280])
async def test_screenshots_at_phone_and_desktop_widths(
    browser: Browser, gateway: Running, upstream: RecordingUpstream, width: int
) -> None:
    c: Customer = await gateway.new_customer("lite")
    for path in ("/v1/monitor/flat", "/v1/monitor/chatgpt", "/v1/monitor/flat"):
        await gateway.call("POST", path, c.key, json={})
    context = await browser.new_context(viewport={"width": width, "height": 900})
    page = await context.new_page()
    await sign_in(page, gateway, c.key)
    await expect(page.get_by_test_id("plan")).to_have_text("lite")
    # Nothing overflows the viewport sideways (tables scroll inside their card).
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"dashboard-{width}.png"
    await page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    await context.close()
