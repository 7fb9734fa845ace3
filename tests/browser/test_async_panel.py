"""The dashboard's async-tasks panel (SPEC 9) in Chromium: the org's queue as the API says."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.test_dashboard import browser, page, sign_in
from tests.queue.conftest import CATALOG, all_done, eventually
from tests.support.harness import Running, catalog_for, start_gateway
from tests.support.upstream import RecordingUpstream

__all__ = ["browser", "page"]  # fixtures shared with the dashboard's other tests


@pytest.fixture
async def qgw(redis_url: str, upstream: RecordingUpstream) -> AsyncIterator[Running]:
    running = await start_gateway(redis_url, catalog_for(upstream.url, CATALOG))
    yield running
    await running.close()


@pytest.fixture
async def qpage(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    yield await context.new_page()
    await context.close()


async def test_the_panel_shows_queued_processing_and_recent_tasks(
    qpage: Page, qgw: Running
) -> None:
    c = await qgw.new_customer("one")
    _, _, first = await qgw.call(
        "POST", "/v1/async/task", c.key, json={"taskType": "FLAT", "payload": {"n": 0}}
    )
    await eventually(lambda: all_done(qgw, c.key, [first["task"]["id"]]))
    _, _, body = await qgw.call(
        "POST",
        "/v1/async/task/batch",
        c.key,
        json=[
            {"taskType": "CHATGPT", "payload": {"sleep": 3}, "priority": 9},
            {"taskType": "FLAT", "payload": {"n": 2}, "priority": 4},
            {"taskType": "FLAT", "payload": {"n": 3}},
        ],
    )
    ids = [first["task"]["id"], *(r["task"]["id"] for r in body["results"])]
    await sign_in(qpage, qgw, c.key)
    panel = qpage.get_by_test_id("async-tasks")
    await expect(panel).to_be_visible()
    await expect(qpage.get_by_test_id("async-queued")).to_have_text("2")
    await expect(qpage.get_by_test_id("async-processing")).to_have_text("1")
    rows = panel.locator("tbody tr")
    await expect(rows).to_have_count(4)
    await expect(rows.nth(0)).to_contain_text(ids[3])  # newest first
    await expect(rows.nth(0)).to_contain_text("QUEUED")
    await expect(rows.nth(0)).to_contain_text("up to 8")
    await expect(rows.nth(1)).to_contain_text("4")
    await expect(rows.nth(2)).to_contain_text("PROCESSING")
    await expect(rows.nth(2)).to_contain_text("CHATGPT")
    await expect(rows.nth(3)).to_contain_text("COMPLETED")
    await expect(rows.nth(3)).to_contain_text(ids[0])
    await expect(rows.nth(3).locator("td").nth(4)).to_have_text("8")


async def test_without_the_async_api_there_is_no_panel(page: Page, gateway: Running) -> None:
    c = await gateway.new_customer("lite")
    await sign_in(page, gateway, c.key)
    await expect(page.get_by_test_id("plan")).to_have_text("lite")
    await expect(page.get_by_test_id("async-tasks")).to_be_hidden()
