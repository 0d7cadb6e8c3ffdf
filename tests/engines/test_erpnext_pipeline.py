"""Whole runs through the ``erpnext`` engine: a real Celery worker process provisions into the Frappe-compatible test
server over HTTP, with the test server's faults standing in for a real site's bad moments."""

from __future__ import annotations

import pytest

from provisioning.models import OnboardingStatus
from provisioning.selectors import onboarding_status
from provisioning.services import onboarding_continue, onboarding_retry, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.workers import wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

CREATED_WITH_THE_COMPANY = ("Company", "Fiscal Year", "Account")


def test_it_provisions_a_tenant_into_erpnext(worker, frappe, lab_engine):
    # given
    tenant = make_tenant(engine=lab_engine)
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    assert all(onboarding.provisioning_steps[name]["attempts"] == 1 for name in STEP_NAMES)
    assert frappe.emulator.get_doc("Company", tenant.company_name)["abbr"] == tenant.abbr
    assert frappe.emulator.get_doc("Cost Center", f"Operations - {tenant.abbr}")["company"] == tenant.company_name
    assert frappe.emulator.get_doc("Warehouse", f"Returns - {tenant.abbr}")["company"] == tenant.company_name
    permissions = [p for p in frappe.docs("User Permission") if p["user"] == tenant.admin_email]
    assert [(p["allow"], p["for_value"]) for p in permissions] == [("Company", tenant.company_name)]
    # company sent explicitly: nothing landed in the site's default company (Lab Co) beyond what it was made with
    lab_co = {d["name"] for d in frappe.docs("Warehouse") + frappe.docs("Cost Center") if d["company"] == "Lab Co"}
    assert lab_co == {
        "Lab Co - LC",
        "Main - LC",
        *(f"{w} - LC" for w in ("All Warehouses", "Stores", "Work In Progress", "Finished Goods", "Goods In Transit")),
    }
    assert frappe.writes(status=409) == []
    result = onboarding.provisioning_steps["step_9_finalize"]["result"]["resources"]
    assert result["step_1_company"] == {"company": tenant.company_name, "abbr": tenant.abbr}


def test_it_absorbs_a_burst_of_503s_with_retries(worker, frappe, lab_engine):
    # given: the engine's proxy answers 503 three times when the warehouses step starts
    tenant = make_tenant(engine=lab_engine)
    frappe.inject(503, times=3, doctype="Warehouse")
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    assert onboarding.provisioning_steps["step_5_warehouses"]["attempts"] == 4
    assert onboarding.provisioning_steps["step_5_warehouses"]["error"] is None
    assert frappe.faults[0].times == 0
    assert [r.status for r in frappe.requests if r.status == 503] == [503, 503, 503]


def test_a_permanent_417_leaves_it_partial_with_the_engines_message_and_continue_completes_it(
    worker, frappe, lab_engine
):
    # given
    tenant = make_tenant(engine=lab_engine)
    frappe.inject(
        417,
        times=None,
        doctype="Cost Center",
        method="POST",
        exc_type="ValidationError",
        message="Cost center <strong>Operations</strong> is frozen by policy",
    )
    # when
    onboarding_start(onboarding=tenant.onboarding)
    onboarding = wait_for_status(tenant.onboarding, {OnboardingStatus.PARTIAL, OnboardingStatus.COMPLETED})
    # then
    status = onboarding_status(onboarding=onboarding)
    assert (status["status"], status["steps_completed"], status["current_step"]) == (
        "PARTIAL",
        4,
        "step_4_cost_centers",
    )
    assert status["errors"] == [
        {
            "step": "step_4_cost_centers",
            "type": "ValidationError",
            "message": "Cost center Operations is frozen by policy",
            "engine_status": 417,
            "at": status["errors"][0]["at"],
        }
    ]
    # when: the operator lifts the policy and continues
    frappe.clear_faults()
    before = len(frappe.requests)
    onboarding_continue(onboarding=onboarding)
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    # then: nothing made by the first run is created again
    created = [
        (r.doctype, r.body["data"]["name"]) for r in frappe.requests[before:] if r.method == "POST" and r.status == 200
    ]
    assert not [c for c in created if c[0] in CREATED_WITH_THE_COMPANY]
    assert ("Cost Center", f"Operations - {tenant.abbr}") in created
    assert frappe.writes(status=409) == []
    assert all(onboarding.provisioning_steps[name]["attempts"] == 1 for name in STEP_NAMES[:4])


def test_a_retry_creates_no_duplicates_in_the_engine(worker, frappe, lab_engine):
    # given: a completed tenant
    tenant = make_tenant(engine=lab_engine)
    onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    docs_before = {
        doctype: len(frappe.docs(doctype))
        for doctype in ("Company", "Cost Center", "Warehouse", "User", "User Permission", "Price List", "Fiscal Year")
    }
    before = len(frappe.requests)
    # when
    onboarding_retry(onboarding=tenant.onboarding)
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    # then: every step ran again, and looked instead of writing
    assert all(onboarding.provisioning_steps[name]["attempts"] == 2 for name in STEP_NAMES)
    assert [r for r in frappe.requests[before:] if r.method != "GET"] == []
    assert {doctype: len(frappe.docs(doctype)) for doctype in docs_before} == docs_before


def test_it_waits_out_a_rate_limit_and_a_database_deadlock(worker, frappe, lab_engine):
    # given: a 429 asking for a 1.5 s pause at the admin user, a deadlock 500 at the user permission
    tenant = make_tenant(engine=lab_engine)
    frappe.inject(429, times=1, doctype="User", retry_after="1.5")
    frappe.inject(500, times=1, doctype="User Permission", exc_type="QueryDeadlockError", message="Deadlock found")
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    steps = onboarding.provisioning_steps
    assert (steps["step_7_admin_user"]["attempts"], steps["step_8_user_permissions"]["attempts"]) == (2, 2)
    retries = [log.message for log in onboarding.logs.filter(step="step_7_admin_user", level="warning")]
    assert len(retries) == 1 and "TooManyRequestsError" in retries[0]
    assert float(retries[0].rsplit("retrying in ", 1)[1].split(" ")[0]) >= 1.5
