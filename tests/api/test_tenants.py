"""GET/POST /api/tenants and GET /api/tenants/<tenant_id> with the fixed cast."""

import pytest

from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun
from provisioning.selectors import onboarding_status
from tenants.models import EngineConnection, Tenant
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


def new_tenant(**overrides):
    body = {
        "slug": "initech",
        "company_name": "Initech Inc",
        "abbr": "INIT",
        "currency": "usd",
        "country": "United States",
        "admin_email": "Admin@Initech.test",
        "extra_cost_centers": ["Operations"],
        "start": False,
    }
    body.update(overrides)
    return body


def slugs(response):
    return [t["slug"] for t in response.json()["results"]]


# --- list ---------------------------------------------------------------------------------------------------------
def test_it_lists_every_tenant_to_an_operator(operator, acme, globex, client_for):
    response = client_for(operator).get("/api/tenants")
    assert response.status_code == 200
    assert response.json()["count"] == 2
    assert slugs(response) == ["acme", "globex"]


def test_it_lists_only_their_own_tenants_to_an_owner(owner, acme, globex, client_for):
    response = client_for(owner).get("/api/tenants")
    assert slugs(response) == ["acme"]


def test_it_lists_only_their_own_tenants_to_an_outsider(outsider, acme, globex, client_for):
    response = client_for(outsider).get("/api/tenants")
    assert slugs(response) == ["globex"]


def test_it_lists_nothing_to_anonymous(acme, anonymous):
    response = anonymous.get("/api/tenants")
    assert response.status_code == 401
    assert "acme" not in response.content.decode()


def test_it_shows_a_tenant_with_its_onboarding_and_no_engine_secret(operator, owner, client_for):
    # given: a tenant on an ERPNext connection with credentials
    engine = EngineConnection.objects.create(
        name="erp-prod", kind="erpnext", base_url="https://erp.example.test", api_key="key-123", api_secret="s3cr3t-xyz"
    )
    umbrella = make_tenant(slug="umbrella", company_name="Umbrella Corp", abbr="UMB", engine=engine, owner=owner)
    # when
    response = client_for(operator).get("/api/tenants")
    # then
    (tenant,) = response.json()["results"]
    assert tenant["engine"] == "erp-prod"
    assert tenant["owner_email"] == "owner@acme.test"
    # the summary says what the status endpoint says
    status = onboarding_status(onboarding=umbrella.onboarding)
    assert tenant["onboarding"] == {
        key: status[key] for key in ("status", "steps_completed", "total_steps", "progress", "current_step")
    }
    assert tenant["onboarding"]["status"] == "PENDING"
    assert "s3cr3t-xyz" not in response.content.decode()
    assert "key-123" not in response.content.decode()


def test_it_filters_by_onboarding_status(operator, acme, globex, client_for):
    # given
    Onboarding.objects.filter(tenant=globex).update(status=OnboardingStatus.PARTIAL)
    # when
    client = client_for(operator)
    # then
    assert slugs(client.get("/api/tenants?status=PARTIAL")) == ["globex"]
    assert slugs(client.get("/api/tenants?status=PENDING")) == ["acme"]
    response = client.get("/api/tenants?status=LOST")
    assert response.status_code == 400
    assert "status" in response.json()["fields"]


def test_it_searches_slug_company_abbreviation_and_admin_email(operator, acme, globex, client_for):
    client = client_for(operator)
    assert slugs(client.get("/api/tenants?search=glob")) == ["globex"]
    assert slugs(client.get("/api/tenants?search=acme ltd")) == ["acme"]
    assert slugs(client.get("/api/tenants?search=GLBX")) == ["globex"]
    assert slugs(client.get("/api/tenants?search=admin@tenant")) == ["acme", "globex"]
    assert slugs(client.get("/api/tenants?search=nothing-like-it")) == []


def test_it_paginates(operator, acme, globex, client_for):
    # when
    client = client_for(operator)
    first = client.get("/api/tenants?page_size=1").json()
    second = client.get("/api/tenants?page_size=1&page=2").json()
    # then
    assert (first["count"], len(first["results"]), first["previous"]) == (2, 1, None)
    assert first["next"].endswith("/api/tenants?page=2&page_size=1")
    assert [t["slug"] for t in second["results"]] == ["globex"] and second["next"] is None
    assert client.get("/api/tenants?page=9").status_code == 404


def test_it_lists_with_a_constant_number_of_queries(operator, client_for, django_assert_num_queries):
    # given
    client = client_for(operator)
    for n in range(3):
        make_tenant(slug=f"few-{n}", company_name=f"Few {n}", abbr=f"FEW{n}")
    with django_assert_num_queries(3) as few:  # token + count + page
        client.get("/api/tenants")
    for n in range(6):
        make_tenant(slug=f"many-{n}", company_name=f"Many {n}", abbr=f"MANY{n}")
    # then
    with django_assert_num_queries(len(few.captured_queries)):
        response = client.get("/api/tenants")
    assert response.json()["count"] == 9


# --- read ---------------------------------------------------------------------------------------------------------
def test_it_reads_a_tenant_by_id_or_slug(operator, acme, client_for):
    client = client_for(operator)
    by_id = client.get(f"/api/tenants/{acme.id}")
    by_slug = client.get("/api/tenants/acme")
    assert by_id.status_code == by_slug.status_code == 200
    assert by_id.json() == by_slug.json()
    assert by_id.json()["id"] == str(acme.id)


def test_it_shows_an_owner_their_tenant(owner, acme, client_for):
    assert client_for(owner).get("/api/tenants/acme").status_code == 200


@pytest.mark.parametrize("who", ["owner", "outsider"])
def test_it_hides_other_peoples_tenants_as_not_found(who, request, acme, globex, client_for):
    # given: the owner asks for globex, the outsider for acme
    user = request.getfixturevalue(who)
    other = globex if who == "owner" else acme
    # when
    client = client_for(user)
    by_slug = client.get(f"/api/tenants/{other.slug}")
    by_id = client.get(f"/api/tenants/{other.id}")
    unknown = client.get("/api/tenants/no-such-tenant")
    # then: exactly like a tenant that does not exist
    assert by_slug.status_code == by_id.status_code == unknown.status_code == 404
    assert by_slug.json() == {"error": "not_found", "detail": f"Unknown tenant '{other.slug}'"}


def test_it_reads_nothing_for_anonymous(acme, anonymous):
    assert anonymous.get("/api/tenants/acme").status_code == 401


# --- create -------------------------------------------------------------------------------------------------------
def test_it_creates_a_tenant_without_starting_when_asked(operator, owner, client_for):
    # when
    response = client_for(operator).post("/api/tenants", new_tenant(owner_email="OWNER@acme.test"), format="json")
    # then
    assert response.status_code == 201
    body = response.json()
    assert response["Location"] == f"/api/tenants/{body['id']}"
    assert (body["slug"], body["currency"], body["admin_email"], body["engine"]) == (
        "initech",
        "USD",
        "admin@initech.test",
        "sandbox",
    )
    assert body["owner_email"] == "owner@acme.test"
    assert body["onboarding"]["status"] == "PENDING"
    assert not ProvisioningRun.objects.exists()
    assert Tenant.objects.get(slug="initech").owner == owner


def test_it_starts_provisioning_on_create_by_default(operator, client_for):
    # when
    response = client_for(operator).post("/api/tenants", new_tenant(start=True), format="json")
    # then: a run is in charge (this test's transaction never commits, so nothing is enqueued)
    assert response.status_code == 201
    assert response.json()["onboarding"]["status"] == "IN_PROGRESS"
    run = ProvisioningRun.objects.get()
    assert (run.kind, run.requested_by) == ("start", "operator@moran.test")


@pytest.mark.parametrize(
    ("overrides", "fields"),
    [
        ({"currency": "XYZ"}, {"currency"}),
        ({"abbr": "ac me"}, {"abbr"}),
        ({"slug": "Not A Slug"}, {"slug"}),
        ({"admin_email": "not-an-email"}, {"admin_email"}),
        ({"extra_warehouses": ["Stores - INIT"]}, {"extra_warehouses"}),
        ({"engine": "nowhere"}, {"engine"}),
        ({"owner_email": "ghost@nowhere.test"}, {"owner_email"}),
        ({"company_name": ""}, {"company_name"}),
        ({"extra_cost_centers": "Operations"}, {"extra_cost_centers"}),
    ],
    ids=[
        "currency",
        "abbr",
        "slug",
        "admin-email",
        "warehouse-with-abbr",
        "engine",
        "owner",
        "blank-company",
        "not-a-list",
    ],
)
def test_it_refuses_invalid_tenants_with_field_errors(operator, client_for, overrides, fields):
    # when
    response = client_for(operator).post("/api/tenants", new_tenant(**overrides), format="json")
    # then
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert set(body["fields"]) == fields
    assert not Tenant.objects.filter(slug="initech").exists()


@pytest.mark.parametrize(
    ("overrides", "field"),
    [({"slug": "acme"}, "slug"), ({"abbr": "ACME"}, "abbr"), ({"company_name": "Acme Ltd"}, "company_name")],
    ids=["slug", "abbr", "company"],
)
def test_it_refuses_a_second_tenant_with_the_same_slug_company_or_abbreviation(
    operator, acme, client_for, overrides, field
):
    response = client_for(operator).post("/api/tenants", new_tenant(**overrides), format="json")
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {field}


def test_it_lets_only_operators_create_tenants(owner, outsider, client_for, anonymous):
    assert client_for(owner).post("/api/tenants", new_tenant(), format="json").status_code == 403
    assert client_for(outsider).post("/api/tenants", new_tenant(), format="json").status_code == 403
    assert anonymous.post("/api/tenants", new_tenant(), format="json").status_code == 401
    assert not Tenant.objects.filter(slug="initech").exists()


def test_it_answers_methods_that_do_not_exist_with_405(operator, acme, client_for):
    client = client_for(operator)
    response = client.delete("/api/tenants/acme")
    assert response.status_code == 405
    assert response.json() == {"error": "method_not_allowed", "detail": 'Method "DELETE" not allowed.'}
    assert client.put("/api/tenants", {}, format="json").status_code == 405
