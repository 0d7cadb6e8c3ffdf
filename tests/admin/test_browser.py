"""The console in a real browser: Debian's Chromium driven by Playwright against a live server and a real worker.

An operator logs in, finds the PARTIAL tenant with its error, presses continue and watches the page move to
COMPLETED. Screenshots go to ``artifacts/screenshots/`` (CI keeps that folder).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.db import connections

from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, SandboxFault
from provisioning.services import onboarding_start
from tenants.models import EngineConnection
from tenants.services import engine_get
from tests.support.factories import make_tenant
from tests.support.workers import ROOT, wait_for_status

pytestmark = [pytest.mark.browser, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

CHROMIUM = "/usr/bin/chromium"
# Playwright must not fetch a browser of its own: it drives the distribution's Chromium, quietly.
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
PASSWORD = "operator-pw-9431"


@pytest.fixture
def page(monkeypatch):
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing (apt-get install chromium chromium-driver; .ci/run does it)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still plain sync code.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1920, "height": 1080})
        context.set_default_timeout(30_000)
        yield context.new_page()
        context.close()
        browser.close()
        # The test body ran its ORM calls inside Playwright's greenlet context, which has database connections of
        # its own (Django's connections are context-local): close them, or the test database cannot be dropped.
        connections.close_all()


def provisioned(slug, company, abbr, *, fail_step=None, wanted=OnboardingStatus.COMPLETED):
    tenant = make_tenant(slug=slug, company_name=company, abbr=abbr)
    if fail_step:
        SandboxFault.objects.create(tenant=tenant, step=fail_step, kind=SandboxFault.Kind.PERMANENT)
    onboarding_start(onboarding=tenant.onboarding, requested_by="test")
    wait_for_status(tenant.onboarding, wanted, timeout=90)
    return tenant


def shot(page, name):
    path = SCREENSHOTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def a_console():
    """An operator account and one tenant of each kind (COMPLETED, FAILED, PENDING, PARTIAL); returns the PARTIAL
    one, acme, failed at step 4 on an engine slowed down so that the operator can watch its run move."""
    User.objects.create_superuser("operator", "operator@moran.test", PASSWORD)
    provisioned("northwind", "Northwind Ltd", "NWT")
    provisioned("globex", "Globex Corp", "GLX", fail_step="step_0_engine_check", wanted=OnboardingStatus.FAILED)
    make_tenant(slug="initech", company_name="Initech Inc", abbr="INI")
    acme = provisioned("acme", "Acme Ltd", "ACME", fail_step="step_4_cost_centers", wanted=OnboardingStatus.PARTIAL)
    SandboxFault.objects.create(tenant=acme, kind=SandboxFault.Kind.LATENCY, latency_ms=120)
    return acme


def admin_login(page, base_url, *, next_path):
    page.goto(f"{base_url}/admin/login/?next={next_path}")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")


def test_it_lets_an_operator_continue_a_partial_tenant_to_completed(live_server, worker, page):
    from playwright.sync_api import expect

    # given: a console with one tenant of each kind, acme PARTIAL at step 4
    acme = a_console()

    # when: the operator logs in
    admin_login(page, live_server.url, next_path="/admin/provisioning/onboarding/")

    # then: the list shows acme PARTIAL 4/10 with its error
    row = page.locator("#result_list tbody tr", has_text="Acme Ltd")
    expect(row.locator(".moran-badge")).to_have_text("Partial")
    expect(row).to_contain_text("4/10 · 40 %")
    expect(row).to_contain_text("step_4_cost_centers: ValidationError [417]: Sandbox fault injected")
    expect(page.locator("#result_list tbody tr")).to_have_count(4)
    list_partial = shot(page, "01-onboarding-list-partial.png")

    # when: they open it
    row.locator("th a").click()
    # then: the timeline says what failed and why
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("Partial")
    failed = page.locator(".moran-timeline tr[data-step=step_4_cost_centers]")
    expect(failed.locator(".moran-badge")).to_have_text("failed")
    expect(failed).to_contain_text("Sandbox fault injected for step_4_cost_centers: the engine refused the request")
    expect(page.locator(".moran-timeline tr[data-step=step_1_company]")).to_contain_text("Acme Ltd")
    expect(page.locator(".moran-logs")).to_contain_text("failed (ValidationError")
    detail_partial = shot(page, "02-onboarding-detail-partial.png")

    # when: they press continue
    page.click("button[data-operation=continue]")
    # then: the page says so, and refreshes itself while the run moves
    expect(page.locator("ul.messagelist")).to_contain_text("Continue started: acme")
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("In progress")
    expect(page.locator("#moran-live")).to_be_visible()
    shot(page, "03-onboarding-detail-running.png")
    # ... until it reaches COMPLETED, without the operator reloading
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("Completed", timeout=120_000)
    expect(page.locator(".field-progress_col")).to_contain_text("10/10 · 100 %")
    expect(page.locator("#moran-live")).to_have_count(0)
    expect(page.locator(".moran-timeline tr[data-step=step_4_cost_centers] .moran-badge")).to_have_text("completed")
    detail_done = shot(page, "04-onboarding-detail-completed.png")

    page.goto(f"{live_server.url}/admin/provisioning/onboarding/")
    expect(page.locator("#result_list tbody tr", has_text="Acme Ltd").locator(".moran-badge")).to_have_text("Completed")
    list_done = shot(page, "05-onboarding-list-after.png")

    # and the record agrees with what the page showed
    onboarding = Onboarding.objects.get(tenant=acme)
    assert (onboarding.status, onboarding.steps_completed, onboarding.progress) == ("COMPLETED", 10, 100)
    run = ProvisioningRun.objects.filter(onboarding=onboarding).first()
    assert (run.kind, run.start_index, run.requested_by) == ("continue", 4, "admin:operator")
    for path in (list_partial, detail_partial, detail_done, list_done):
        assert path.stat().st_size > 10_000, path


def test_it_creates_a_tenant_from_the_admin_and_provisions_it(live_server, worker, page):
    from playwright.sync_api import expect

    # given: an operator and an ERPNext connection whose secret must never reach the page
    User.objects.create_superuser("operator", "operator@moran.test", PASSWORD)
    engine_get()  # the default sandbox connection
    secret = "browser-visible-secret-NEVER-5d1e"
    erp = EngineConnection.objects.create(
        name="erp-eu", kind=EngineConnection.Kind.ERPNEXT, base_url="https://erp.example.com", api_key="k1"
    )
    erp.api_secret = secret
    erp.save()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/tenants/tenant/add/")
    page.fill("#id_username", "operator")
    page.fill("#id_password", PASSWORD)
    page.click("input[type=submit]")

    # when: they fill in the add form and save
    page.fill("#id_slug", "umbrella")
    page.fill("#id_company_name", "Umbrella Corp")
    page.fill("#id_abbr", "UMB")
    page.fill("#id_currency", "eur")
    page.fill("#id_country", "Germany")
    page.fill("#id_admin_email", "Admin@Umbrella.test")
    page.fill("#id_extra_cost_centers", "Operations\nResearch")
    page.fill("#id_extra_warehouses", "Returns")
    page.select_option("#id_engine", label="sandbox")
    shot(page, "06-tenant-add-form.png")
    page.click("input[name=_save]")

    # then: they land on its provisioning page and watch it reach COMPLETED
    expect(page.locator("ul.messagelist")).to_contain_text("Provisioning started: umbrella")
    expect(page.locator(".field-status_col .moran-badge")).to_have_text("Completed", timeout=120_000)
    expect(page.locator(".moran-timeline tr[data-step=step_4_cost_centers]")).to_contain_text("Research - UMB")
    tenant = Onboarding.objects.get(tenant__slug="umbrella").tenant
    assert (tenant.currency, tenant.admin_email, tenant.status) == ("EUR", "admin@umbrella.test", "active")

    # and the engine connection page offers a write-only secret field, never the secret
    page.goto(f"{live_server.url}/admin/tenants/engineconnection/{erp.pk}/change/")
    expect(page.locator("#id_new_api_secret")).to_have_value("")
    expect(page.locator(".field-secret_state")).to_contain_text("set")
    assert secret not in page.content()
    shot(page, "07-engine-connection-form.png")
