"""``provision_tenant --plan`` (what a run would do, writing nothing) and ``--verify`` (drift against the engine), on
the sandbox and on the erpnext engine."""

from __future__ import annotations

import pytest

from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, SandboxDocument, StepLog
from provisioning.services import onboarding_start
from tests.support.commands import run
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db

CREATE = ["--create", "--company", "Plan Co", "--abbr", "PLC", "--currency", "EUR", "--country", "Germany"]


def provisioned(on_commit, **overrides):
    tenant = make_tenant(**overrides)
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    return tenant


def test_plan_of_a_new_tenant_on_the_sandbox_lists_what_a_run_would_create_and_writes_nothing(eager):
    # when
    code, out, err = run(
        "provision_tenant", "plan-co", *CREATE, "--admin-email", "admin@plan.test", "--warehouse", "Returns", "--plan"
    )
    # then
    assert (code, err) == (0, "")
    assert "create Company 'Plan Co' (missing)" in out
    assert "create Warehouse 'Returns - PLC' (extra warehouse)" in out
    assert "create User Permission 'admin@plan.test → Plan Co' (missing)" in out
    assert out.strip().endswith("plan only: nothing was written")
    onboarding = Onboarding.objects.get(tenant__slug="plan-co")
    assert onboarding.status == OnboardingStatus.PENDING
    assert {entry["status"] for entry in onboarding.provisioning_steps.values()} == {"pending"}
    assert {entry["attempts"] for entry in onboarding.provisioning_steps.values()} == {0}
    assert not ProvisioningRun.objects.exists() and not StepLog.objects.exists()
    assert not SandboxDocument.objects.filter(name__endswith=" - PLC").exists()
    assert not SandboxDocument.objects.filter(doctype="Company", name="Plan Co").exists()


def test_verify_on_the_sandbox_finds_no_drift_then_names_a_deleted_warehouse(eager, on_commit):
    # given
    tenant = provisioned(on_commit)
    code, out, _ = run("provision_tenant", tenant.slug, "--verify")
    assert code == 0 and "no drift: every resource is present" in out
    SandboxDocument.objects.filter(doctype="Warehouse", name=f"Returns - {tenant.abbr}").delete()
    # when
    code, out, _ = run("provision_tenant", tenant.slug, "--verify")
    # then
    assert code == 1
    assert "step_5_warehouses            missing" in out
    assert f"create Warehouse 'Returns - {tenant.abbr}' (missing)" in out
    assert out.strip().splitlines()[-1] == "drift in step_5_warehouses"


def test_plan_of_a_new_tenant_on_erpnext_only_reads(frappe, lab_engine):
    # when
    code, out, err = run(
        "provision_tenant", "plan-co", *CREATE, "--admin-email", "admin@plan.test", "--engine", "lab", "--plan"
    )
    # then
    assert (code, err) == (0, "")
    assert "on engine lab (erpnext):" in out
    assert "create Company 'Plan Co' (missing)" in out
    assert "step_2_fiscal_year           nothing to do" in out  # the site's all-company year covers today
    assert {r.method for r in frappe.requests} == {"GET"}
    assert not ProvisioningRun.objects.exists() and not StepLog.objects.exists()


def test_verify_on_erpnext_names_what_was_deleted_or_changed_in_the_engine(eager, on_commit, frappe, lab_engine):
    # given
    tenant = provisioned(on_commit, engine=lab_engine)
    assert run("provision_tenant", tenant.slug, "--verify")[0] == 0
    frappe.emulator.delete("Cost Center", f"Operations - {tenant.abbr}")
    frappe.emulator.update("Price List", f"{tenant.abbr} Selling", {"currency": "USD"})
    writes = len([r for r in frappe.requests if r.method != "GET"])
    # when
    code, out, _ = run("provision_tenant", tenant.slug, "--verify")
    # then
    assert code == 1
    assert "step_4_cost_centers          missing" in out
    assert f"create Cost Center 'Operations - {tenant.abbr}' (missing)" in out
    assert "step_6_master_data           different" in out
    assert f"update Price List '{tenant.abbr} Selling' (currency USD should be {tenant.currency})" in out
    assert out.strip().splitlines()[-1] == "drift in step_4_cost_centers, step_6_master_data"
    assert len([r for r in frappe.requests if r.method != "GET"]) == writes


def test_verify_refuses_to_create(frappe):
    code, _, err = run("provision_tenant", "x", *CREATE, "--admin-email", "a@b.test", "--verify")
    assert code == 2 and err.strip() == "error: --verify checks an existing tenant: drop --create"
