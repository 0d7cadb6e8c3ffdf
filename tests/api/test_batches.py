"""POST /api/tenants/batch and GET /api/tenants/batch/<id> with the fixed cast, in the embedded mode (tasks
in-process). The same through a real worker: ``tests/realpath/test_batches.py``."""

from __future__ import annotations

import uuid

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from provisioning.models import OnboardingStatus, ProvisioningBatch, ProvisioningRun, SandboxFault
from tenants.models import Tenant
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db(transaction=True)

URL = "/api/tenants/batch"


def row(i: int, prefix: str = "ab", **overrides) -> dict:
    body = {
        "slug": f"{prefix}-{i}",
        "company": f"{prefix.title()} {i} Ltd",
        "abbr": f"{prefix.upper()}{i}",
        "currency": "EUR",
        "country": "Germany",
        "admin_email": f"admin@{prefix}-{i}.test",
        "cost_centers": ["Operations"],
    }
    body.update(overrides)
    return body


def test_it_creates_and_provisions_a_json_list_and_a_second_post_starts_no_new_run(eager, operator, client_for):
    # given
    client = client_for(operator)
    rows = [row(i) for i in range(1, 4)]
    # when
    response = client.post(f"{URL}?concurrency=2", rows, format="json")
    # then: 202 with the batch, every tenant COMPLETED (embedded mode runs them before answering)
    assert response.status_code == 202, response.json()
    body = response.json()
    assert response["Location"] == f"/api/tenants/batch/{body['id']}"
    assert (body["total"], body["done"], body["progress"], body["finished"]) == (3, 3, 100, True)
    assert body["counts"]["COMPLETED"] == 3 and body["failures"] == []
    assert body["concurrency"] == 2
    runs = ProvisioningRun.objects.count()
    # when: the same rows again
    again = client.post(URL, rows, format="json")
    # then
    assert again.status_code == 202
    assert [t["action"] for t in again.json()["tenants"]] == ["leave"] * 3
    assert ProvisioningRun.objects.count() == runs


def test_it_refuses_a_bad_currency_and_a_duplicate_slug_naming_both_and_creates_nothing(eager, operator, client_for):
    # given: rows[1] has a bad currency, rows[2] repeats rows[0]'s slug
    rows = [row(1), row(2, currency="XYZ"), row(3, slug="ab-1")]
    # when
    response = client_for(operator).post(URL, rows, format="json")
    # then
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid"
    assert body["fields"] == {
        "rows[1]": ["currency: 'XYZ' is not an ISO 4217 currency code"],
        "rows[2]": ["slug: slug 'ab-1' is also on rows[0]"],
    }
    assert Tenant.objects.count() == 0 and ProvisioningBatch.objects.count() == 0


def test_it_takes_a_csv_upload_and_names_lines_3_and_4(eager, operator, client_for):
    # given
    text = (
        "slug,company,abbr,currency,country,admin_email\n"
        "cu-1,Cu One Ltd,CU1,EUR,Germany,a@cu.test\n"
        "cu-2,Cu Two Ltd,CU2,XYZ,Germany,b@cu.test\n"
        "cu-1,Cu Three Ltd,CU3,EUR,Germany,c@cu.test\n"
    )
    upload = SimpleUploadedFile("tenants.csv", text.encode(), content_type="text/csv")
    # when
    response = client_for(operator).post(URL, {"file": upload}, format="multipart")
    # then
    assert response.status_code == 400
    assert set(response.json()["fields"]) == {"line 3", "line 4"}
    assert Tenant.objects.count() == 0


def test_it_takes_a_text_csv_body(eager, operator, client_for):
    text = (
        "slug,company,abbr,currency,country,admin_email,warehouses\ntc-1,Tc Ltd,TC1,USD,United States,a@tc.test,A;B\n"
    )
    response = client_for(operator).post(URL, text, content_type="text/csv")
    assert response.status_code == 202, response.json()
    assert response.json()["counts"]["COMPLETED"] == 1
    assert Tenant.objects.get(slug="tc-1").extra_warehouses == ["A", "B"]


@pytest.mark.parametrize(
    ("body", "kwargs", "field"),
    [
        ({"slug": "x"}, {"format": "json"}, "rows"),
        ([], {"format": "json"}, "rows"),
        ([row(1, colour="red")], {"format": "json"}, "rows[0]"),
        ([row(1, abbr=7)], {"format": "json"}, "rows[0]"),
        ({"other": "x"}, {"format": "multipart"}, "file"),
        (b"\xff\xfe\x00bad", {"content_type": "text/csv"}, "file"),
    ],
)
def test_it_answers_400_to_malformed_input(eager, operator, client_for, body, kwargs, field):
    response = client_for(operator).post(URL, body, **kwargs)
    assert response.status_code == 400
    assert field in response.json()["fields"]
    assert Tenant.objects.count() == 0


def test_it_answers_400_to_a_bad_concurrency_or_engine(eager, operator, client_for):
    client = client_for(operator)
    assert client.post(f"{URL}?concurrency=0", [row(1)], format="json").status_code == 400
    assert client.post(f"{URL}?concurrency=lots", [row(1)], format="json").status_code == 400
    assert client.post(f"{URL}?engine=nowhere", [row(1)], format="json").status_code == 400
    assert Tenant.objects.count() == 0


def test_it_reports_failures_with_their_step_and_error(eager, operator, client_for):
    # given: the tenant of the second row exists (PENDING) and will fail at its cost centers
    tenant = make_tenant(
        slug="ab-2",
        company_name="Ab 2 Ltd",
        abbr="AB2",
        currency="EUR",
        country="Germany",
        admin_email="admin@ab-2.test",
        extra_cost_centers=["Operations"],
        extra_warehouses=[],
    )
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    client = client_for(operator)
    created = client.post(URL, [row(1), row(2)], format="json").json()
    # when
    response = client.get(f"{URL}/{created['id']}")
    # then
    assert response.status_code == 200
    body = response.json()
    assert body["counts"]["COMPLETED"] == 1 and body["counts"]["PARTIAL"] == 1
    assert body["progress"] == 70  # (100 + 40) / 2
    [failure] = body["failures"]
    assert (failure["tenant"], failure["status"], failure["step"]) == ("ab-2", "PARTIAL", "step_4_cost_centers")
    assert failure["error"]["type"] == "ValidationError"


def test_an_owner_gets_403_and_anonymous_401(eager, owner, operator, client_for, anonymous):
    batch = client_for(operator).post(URL, [row(1)], format="json").json()
    owner_client = client_for(owner)
    assert owner_client.post(URL, [row(2)], format="json").status_code == 403
    assert owner_client.get(f"{URL}/{batch['id']}").status_code == 403
    assert anonymous.post(URL, [row(2)], format="json").status_code == 401
    assert anonymous.get(f"{URL}/{batch['id']}").status_code == 401
    assert not Tenant.objects.filter(slug="ab-2").exists()


def test_an_unknown_batch_is_404(operator, client_for):
    client = client_for(operator)
    assert client.get(f"{URL}/{uuid.uuid4()}").status_code == 404
    assert client.get(f"{URL}/not-a-uuid").status_code == 404


def test_a_pending_batch_has_its_status_counted(operator, client_for):
    # given: a batch as the services leave it before anything started (no workers in this test, no eager)
    from provisioning.batches import batch_create, batch_rows_from_list, batch_validate
    from tenants.services import engine_get

    engine = engine_get()
    rows = batch_validate(rows=batch_rows_from_list(rows=[row(1), row(2)]), engine=engine)
    batch = batch_create(rows=rows, engine=engine, concurrency=1)
    # when
    body = client_for(operator).get(f"{URL}/{batch.pk}").json()
    # then
    assert body["counts"][OnboardingStatus.PENDING] == 2
    assert (body["done"], body["finished"], body["progress"]) == (0, False, 0)
    assert [t["started"] for t in body["tenants"]] == [False, False]
