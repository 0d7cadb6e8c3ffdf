"""Step 8 never takes access away from a user Moran did not create: an admin user that existed in the engine and could
see every company (or is a System Manager) is not restricted unless the operator allows it for that tenant; a user
Moran created may gain a second company. The Frappe-compatible server models what a User Permission restricts
(recording 15: one User Permission on Company and the user lists only that company; reading another is a 403)."""

from __future__ import annotations

import pytest
import requests

from provisioning.engines.emulator import ERPNextEmulator
from provisioning.engines.errors import EngineAuthError
from provisioning.models import OnboardingStatus
from provisioning.services import onboarding_continue, onboarding_retry, onboarding_start
from tenants.models import Tenant
from tenants.services import tenant_allow_restricting_existing_admin
from tests.support.commands import run
from tests.support.factories import make_tenant
from tests.support.memory_store import MemoryStore

pytestmark = pytest.mark.django_db

EXISTING = "lab@example.com"


def companies_seen_by(frappe, user) -> list[str]:
    response = requests.get(
        frappe.url + "/api/resource/Company",
        params={"fields": '["name"]', "limit_page_length": 0},
        headers={"Authorization": frappe.user_token(user)},
        timeout=10,
    )
    assert response.status_code == 200
    return sorted(row["name"] for row in response.json()["data"])


def read_company_as(frappe, user, company) -> requests.Response:
    return requests.get(
        frappe.url + f"/api/resource/Company/{company}", headers={"Authorization": frappe.user_token(user)}, timeout=10
    )


def provision(on_commit, tenant, service=onboarding_start):
    on_commit(service, onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    return tenant.onboarding


@pytest.fixture
def existing_user(frappe):
    """A user of the site from before Moran: no User Permission, so they see every company."""
    frappe.emulator.insert("User", {"email": EXISTING, "first_name": "Lab", "roles": [{"role": "Accounts User"}]})
    return EXISTING


def test_it_refuses_to_restrict_an_existing_unrestricted_user(eager, on_commit, frappe, lab_engine, existing_user):
    # given
    tenant = make_tenant(engine=lab_engine, admin_email=existing_user)
    before = companies_seen_by(frappe, existing_user)
    # when
    onboarding = provision(on_commit, tenant)
    # then: step 8 failed and says why and what to do; the user kept every company
    step = onboarding.provisioning_steps["step_8_user_permissions"]
    assert onboarding.status == OnboardingStatus.PARTIAL
    assert step["status"] == "failed"
    assert step["error"]["type"] == "ExistingUserNotRestricted"
    assert "existed in the engine before Moran" in step["error"]["message"]
    assert "--allow-restrict-existing-admin" in step["error"]["message"]
    assert [p for p in frappe.docs("User Permission") if p["user"] == existing_user] == []
    assert companies_seen_by(frappe, existing_user) == sorted([*before, tenant.company_name])
    assert "Lab Co" in before


def test_it_refuses_to_restrict_a_system_manager_even_one_already_restricted(
    eager, on_commit, frappe, lab_engine, existing_user
):
    # given: a System Manager with a User Permission on the site's own company
    frappe.emulator.update("User", existing_user, {"roles": [{"role": "System Manager"}]})
    frappe.emulator.insert("User Permission", {"user": existing_user, "allow": "Company", "for_value": "Lab Co"})
    tenant = make_tenant(engine=lab_engine, admin_email=existing_user)
    # when
    onboarding = provision(on_commit, tenant)
    # then
    assert onboarding.provisioning_steps["step_8_user_permissions"]["error"]["type"] == "ExistingUserNotRestricted"
    assert "is a System Manager" in onboarding.provisioning_steps["step_8_user_permissions"]["error"]["message"]


def test_when_the_operator_allows_it_the_user_is_restricted_to_the_tenants_company(
    eager, on_commit, frappe, lab_engine, existing_user
):
    # given: the refusal, then the operator's explicit choice for this tenant
    tenant = make_tenant(engine=lab_engine, admin_email=existing_user)
    provision(on_commit, tenant)
    tenant_allow_restricting_existing_admin(tenant=tenant)
    # when
    onboarding = provision(on_commit, tenant, onboarding_continue)
    # then: the User Permission restricts the user, as in the recording
    assert onboarding.status == OnboardingStatus.COMPLETED
    assert companies_seen_by(frappe, existing_user) == [tenant.company_name]
    refused = read_company_as(frappe, existing_user, "Lab Co")
    assert refused.status_code == 403
    assert refused.json()["exc_type"] == "PermissionError"
    assert read_company_as(frappe, existing_user, tenant.company_name).status_code == 200


def test_a_user_moran_created_for_another_tenant_gains_a_second_company(eager, on_commit, frappe, lab_engine):
    # given: tenant A's run created the admin user and restricted it to A's company
    first = make_tenant(engine=lab_engine, admin_email="shared@tenants.test")
    assert provision(on_commit, first).status == OnboardingStatus.COMPLETED
    assert companies_seen_by(frappe, "shared@tenants.test") == [first.company_name]
    # when: tenant B has the same admin
    second = make_tenant(engine=lab_engine, admin_email="shared@tenants.test")
    onboarding = provision(on_commit, second)
    # then
    assert onboarding.status == OnboardingStatus.COMPLETED
    assert companies_seen_by(frappe, "shared@tenants.test") == sorted([first.company_name, second.company_name])


def test_a_user_moran_created_stays_its_own_across_a_retry(eager, on_commit, frappe, lab_engine):
    # given: step 7 created the user, then step 8 failed before restricting it
    tenant = make_tenant(engine=lab_engine)
    frappe.inject(417, doctype="User Permission", method="POST")
    assert provision(on_commit, tenant).status == OnboardingStatus.PARTIAL
    # when: every step again (step 7 now finds the user existing)
    onboarding = provision(on_commit, tenant, onboarding_retry)
    # then
    assert onboarding.status == OnboardingStatus.COMPLETED
    assert onboarding.provisioning_steps["step_7_admin_user"]["result"]["created_by_moran"] is True
    assert companies_seen_by(frappe, tenant.admin_email) == [tenant.company_name]


def test_the_emulator_models_what_a_user_permission_restricts():
    # given: a site with two companies and a user (recording 15)
    site = ERPNextEmulator(MemoryStore())
    site.insert("Company", {"company_name": "Other Co", "abbr": "OC", "default_currency": "EUR", "country": "Germany"})
    site.insert("User", {"email": "u@lab.test", "first_name": "U"})
    everything = sorted(row["name"] for row in site.get_list("Company"))
    user = site.acting_as("u@lab.test")
    assert sorted(row["name"] for row in user.get_list("Company")) == everything
    # when: one User Permission on Company
    permission = site.insert("User Permission", {"user": "u@lab.test", "allow": "Company", "for_value": "Other Co"})
    # then: the user lists only that company, and reading another is a 403 PermissionError
    assert [row["name"] for row in user.get_list("Company")] == ["Other Co"]
    with pytest.raises(EngineAuthError) as refused:
        user.get_doc("Company", next(name for name in everything if name != "Other Co"))
    assert (refused.value.status, refused.value.exc_type) == (403, "PermissionError")
    # and the Administrator is not restricted; deleting the permission lifts it
    assert sorted(row["name"] for row in site.get_list("Company")) == everything
    site.delete("User Permission", permission["name"])
    assert sorted(row["name"] for row in user.get_list("Company")) == everything


def test_the_operator_allows_it_through_the_api_the_cli_and_the_admin(operator, client_for, admin_client, eager):
    # API: on create
    body = {
        "slug": "lab-tenant",
        "company_name": "Lab Tenant Ltd",
        "abbr": "LABT",
        "currency": "EUR",
        "country": "Germany",
        "admin_email": EXISTING,
        "start": False,
        "allow_restricting_existing_admin": True,
    }
    response = client_for(operator).post("/api/tenants", body, format="json")
    assert response.status_code == 201
    assert response.json()["allow_restricting_existing_admin"] is True
    # CLI: on create, and later on an existing tenant
    code, _, err = run(
        "provision_tenant", "cli-tenant", "--create", "--company", "Cli Ltd", "--abbr", "CLI", "--currency", "EUR",
        "--country", "Germany", "--admin-email", "x@cli.test", "--allow-restrict-existing-admin", "--no-wait",
    )  # fmt: skip
    assert code == 0, err
    later = make_tenant()
    run("provision_tenant", later.slug, "--allow-restrict-existing-admin", "--no-wait")
    assert set(Tenant.objects.filter(allow_restricting_existing_admin=True).values_list("slug", flat=True)) == {
        "lab-tenant",
        "cli-tenant",
        later.slug,
    }
    # admin: a field of the tenant's page
    assert b'name="allow_restricting_existing_admin"' in admin_client.get("/admin/tenants/tenant/add/").content
