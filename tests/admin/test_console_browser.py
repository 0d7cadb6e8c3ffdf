"""The README's console quick start in a real browser: `make console` on a fresh clone's embedded default (no DEBUG,
no broker), then log in with the printed password, find the PARTIAL demo tenant, press Continue and see COMPLETED.

Debian's Chromium driven by Playwright (it never downloads a browser of its own); screenshots go to
``artifacts/screenshots/`` (CI keeps that folder).
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.support.console import start_console
from tests.support.workers import ROOT

pytestmark = [pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "artifacts" / "screenshots"


@pytest.fixture
def browser_page():
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver; .ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 720})
        context.set_default_timeout(30_000)
        yield context.new_page()
        context.close()
        browser.close()


@pytest.fixture
def console(tmp_path):
    console = start_console(tmp_path)
    yield console
    console.stop()


def shot(page, name: str) -> Path:
    path = SCREENSHOTS / name
    page.screenshot(path=str(path))
    return path


def test_it_takes_a_newcomer_from_make_console_to_a_continued_tenant(console, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    # when: the newcomer logs in with the password `make console` printed
    page.goto(f"{console.url}/admin/login/?next=/admin/provisioning/onboarding/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", console.password)
    page.click("input[type=submit]")

    # then: both demo tenants, in a styled console (the admin's stylesheet loaded: its header is coloured)
    partial = page.locator("#result_list tbody tr", has_text="Acme Demo Ltd")
    expect(partial.locator(".moran-badge")).to_have_text("Partial")
    expect(partial).to_contain_text("4/10 · 40 %")
    expect(page.locator("#result_list tbody tr", has_text="Northwind Demo Ltd").locator(".moran-badge")).to_have_text(
        "Completed"
    )
    header = page.locator("#header").evaluate("element => getComputedStyle(element).backgroundColor")
    assert header not in ("rgba(0, 0, 0, 0)", "transparent"), "the admin's CSS did not load"
    listing = shot(page, "console-01-list.png")

    # when: they open the PARTIAL tenant and press Continue
    partial.locator("th a").click()
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("Partial")
    shot(page, "console-02-partial.png")
    page.click("button[data-operation=continue]")

    # then: on the embedded default the run went on in the server's process, so the page is back COMPLETED
    expect(page.locator("ul.messagelist")).to_contain_text("Continue started: demo-acme")
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("Completed", timeout=60_000)
    expect(page.locator(".field-progress_col")).to_contain_text("10/10 · 100 %")
    done = shot(page, "console-03-completed.png")
    for path in (listing, done):
        assert path.stat().st_size > 10_000, path


def test_the_api_docs_page_loads_everything_from_the_server_itself(console, browser_page):
    from playwright.sync_api import expect

    page = browser_page
    requested: list[str] = []
    page.on("request", lambda request: requested.append(request.url))
    # when
    page.goto(f"{console.url}/api/docs/")
    # then: Swagger UI drew the schema, and nothing was asked of another host
    expect(page.locator(".swagger-ui .info .title")).to_contain_text("Moran operators' API")
    expect(page.locator(".opblock-summary-path", has_text="/api/auth/login").first).to_be_visible()
    shot(page, "console-04-api-docs.png")
    here = urlsplit(console.url).netloc
    elsewhere = [url for url in requested if urlsplit(url).scheme in ("http", "https") and urlsplit(url).netloc != here]
    assert not elsewhere, elsewhere
    assert any(url.endswith("/api/schema/") for url in requested), requested
