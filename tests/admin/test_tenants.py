"""Tenants in the admin: created with the API's validation, provisioning started on save."""

from __future__ import annotations

import pytest
from django.urls import reverse

from provisioning.models import OnboardingStatus, ProvisioningRun
from provisioning.services import onboarding_start
from tenants.models import Tenant
from tenants.services import engine_get
from tests.support.factories import make_tenant
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db

ADD_URL = reverse("admin:tenants_tenant_add")


def form_data(**overrides):
    data = {
        "slug": "acme",
        "name": "",
        "company_name": "Acme Ltd",
        "abbr": "ACME",
        "currency": "eur",
        "country": "Germany",
        "admin_email": "Admin@Acme.test",
        "admin_first_name": "Ada",
        "extra_cost_centers": "Operations\nResearch",
        "extra_warehouses": "Returns",
        "engine": engine_get().pk,
        "owner": "",
    }
    data.update(overrides)
    return data


def test_it_creates_a_tenant_and_starts_provisioning(admin_client, eager, on_commit):
    # when
    response = on_commit(admin_client.post, ADD_URL, form_data(), follow=True)
    # then: the operator lands on the provisioning page
    assert response.status_code == 200
    tenant = Tenant.objects.get(slug="acme")
    assert response.redirect_chain[-1][0] == reverse(
        "admin:provisioning_onboarding_change", args=[tenant.onboarding.pk]
    )
    assert (tenant.name, tenant.currency, tenant.admin_email) == ("Acme Ltd", "EUR", "admin@acme.test")
    assert tenant.extra_cost_centers == ["Operations", "Research"] and tenant.extra_warehouses == ["Returns"]
    run = ProvisioningRun.objects.get(onboarding=tenant.onboarding)
    assert (run.kind, run.requested_by) == ("start", "admin:admin")
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    messages = [str(m) for m in response.context["messages"]]
    assert "Provisioning started: acme" in messages


def test_it_does_not_enqueue_before_the_admin_transaction_commits(
    admin_client, eager, django_capture_on_commit_callbacks
):
    # when: the callbacks are captured, not run (as if the transaction had not committed yet)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        admin_client.post(ADD_URL, form_data())
    # then: the run is claimed, and sending it waits for the commit
    onboarding = Tenant.objects.get(slug="acme").onboarding
    assert onboarding.status == OnboardingStatus.IN_PROGRESS
    assert ProvisioningRun.objects.get(onboarding=onboarding).enqueued_at is None
    assert len(callbacks) == 1


@pytest.mark.parametrize(
    ("overrides", "field", "message"),
    [
        ({"currency": "XYZ"}, "currency", "'XYZ' is not an ISO 4217 currency code"),
        ({"extra_warehouses": "Returns - ACME"}, "extra_warehouses", "A list of plain names (without ' - ABBR')"),
        ({"slug": "Bad-Slug"}, "slug", "Use 2-63 lowercase letters, digits and hyphens."),
        ({"abbr": "a"}, "abbr", "Use 2-10 uppercase letters or digits."),
        ({"admin_email": "not-an-email"}, "admin_email", "Enter a valid email address."),
    ],
)
def test_it_refuses_what_the_api_refuses(admin_client, overrides, field, message):
    # when
    response = admin_client.post(ADD_URL, form_data(**overrides))
    # then
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert errors[field] == [message]
    assert not Tenant.objects.filter(company_name="Acme Ltd").exists()


def test_it_refuses_a_company_or_abbreviation_taken_on_the_same_engine(admin_client):
    make_tenant(slug="first", company_name="Acme Ltd", abbr="ACME")
    response = admin_client.post(ADD_URL, form_data(slug="second"))
    form = response.context["adminform"].form
    assert not form.is_valid()
    assert Tenant.objects.filter(slug="second").count() == 0
    assert "already exists" in str(form.errors)


def test_it_keeps_what_the_engine_holds_fixed_after_create(admin_client):
    # given
    tenant = make_tenant(slug="fixed", company_name="Fixed Ltd", abbr="FIX")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    # when
    response = admin_client.post(
        url,
        {
            "name": "Fixed Workspace",
            "admin_email": "boss@fixed.test",
            "admin_first_name": "",
            "extra_cost_centers": "Operations",
            "extra_warehouses": "",
            "owner": "",
            "company_name": "Hijacked Ltd",
            "abbr": "HIJ",
        },
    )
    # then
    assert response.status_code == 302
    tenant.refresh_from_db()
    assert (tenant.name, tenant.admin_email, tenant.company_name, tenant.abbr) == (
        "Fixed Workspace",
        "boss@fixed.test",
        "Fixed Ltd",
        "FIX",
    )
    assert tenant.extra_warehouses == []


def test_it_shows_provisioning_on_the_tenant_list_with_a_constant_query_count(admin_client):
    make_tenant(slug="solo")
    one = count_queries(admin_client, reverse("admin:tenants_tenant_changelist"))
    for n in range(49):
        make_tenant(slug=f"many-{n}", company_name=f"Many {n} Ltd", abbr=f"MN{n}")
    response = admin_client.get(reverse("admin:tenants_tenant_changelist"))
    assert 'data-status="PENDING"' in response.content.decode()
    fifty = count_queries(admin_client, reverse("admin:tenants_tenant_changelist"))
    assert one == fifty, f"{one} queries for 1 tenant, {fifty} for 50"
    print(f"tenant changelist: {one} queries for 1 row, {fifty} for 50")


def test_it_searches_tenants(admin_client):
    make_tenant(slug="needle", company_name="Haystack GmbH", abbr="HAY")
    make_tenant(slug="other", company_name="Other GmbH", abbr="OTH")
    for query in ("needle", "Haystack"):
        response = admin_client.get(reverse("admin:tenants_tenant_changelist"), {"q": query})
        assert [t.slug for t in response.context["cl"].result_list] == ["needle"]


def test_it_does_not_delete_a_tenant_while_a_run_is_in_charge(admin_client, eager):
    # given: a run claimed (not sent: no commit here)
    tenant = make_tenant(slug="running")
    onboarding_start(onboarding=tenant.onboarding)
    idle = make_tenant(slug="idle")
    # when / then
    assert (
        admin_client.post(reverse("admin:tenants_tenant_delete", args=[tenant.pk]), {"post": "yes"}).status_code == 403
    )
    assert Tenant.objects.filter(slug="running").exists()
    assert admin_client.post(reverse("admin:tenants_tenant_delete", args=[idle.pk]), {"post": "yes"}).status_code == 302
    assert not Tenant.objects.filter(slug="idle").exists()
