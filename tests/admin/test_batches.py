"""The batches in the console: progress and counts per status on the list, the tenants on the detail page, a
constant query count, and the "continue the PARTIAL ones" action."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from provisioning.batches import batch_create, batch_rows_from_list, batch_start, batch_validate
from provisioning.models import OnboardingStatus, ProvisioningBatch, ProvisioningRun, SandboxFault
from tenants.models import Tenant
from tenants.services import engine_get
from tests.support.factories import make_tenant
from tests.support.queries import count_queries

pytestmark = pytest.mark.django_db(transaction=True)

LIST_URL = reverse("admin:provisioning_provisioningbatch_changelist")


def row(slug: str) -> dict:
    return {
        "slug": slug,
        "company": f"{slug.title()} Ltd",
        "abbr": slug.replace("-", "").upper()[:10],
        "currency": "EUR",
        "country": "Germany",
        "admin_email": f"admin@{slug}.test",
    }


def make_batch(slugs: list[str], *, concurrency: int = 2, start: bool = True) -> ProvisioningBatch:
    engine = engine_get()
    rows = batch_validate(rows=batch_rows_from_list(rows=[row(s) for s in slugs]), engine=engine)
    batch = batch_create(rows=rows, engine=engine, concurrency=concurrency, requested_by="test")
    if start:
        batch_start(batch=batch)
    return batch


@pytest.fixture
def partial_batch(eager):
    """A batch of three whose second tenant stopped PARTIAL at its cost centers."""
    failing = make_tenant(
        slug="bb-2",
        company_name="Bb-2 Ltd",
        abbr="BB2",
        currency="EUR",
        country="Germany",
        admin_email="admin@bb-2.test",
        extra_cost_centers=[],
        extra_warehouses=[],
    )
    SandboxFault.objects.create(tenant=failing, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    batch = make_batch(["bb-1", "bb-2", "bb-3"])
    assert dict(batch.items.values_list("tenant__slug", "tenant__onboarding__status")) == {
        "bb-1": "COMPLETED",
        "bb-2": "PARTIAL",
        "bb-3": "COMPLETED",
    }
    return batch


def test_it_lists_batches_with_their_progress_and_counts_per_status(admin_client, partial_batch):
    # when
    response = admin_client.get(LIST_URL)
    # then
    assert response.status_code == 200
    html = response.content.decode()
    assert str(partial_batch.pk)[:8] in html
    assert "3/3 &middot; 100 %" in html
    assert 'data-status="COMPLETED" style="background:#15803d">COMPLETED 2<' in html
    assert 'data-status="PARTIAL" style="background:#c2410c">PARTIAL 1<' in html


def test_it_shows_a_batch_with_its_tenants(admin_client, partial_batch):
    url = reverse("admin:provisioning_provisioningbatch_change", args=[partial_batch.pk])
    response = admin_client.get(url)
    assert response.status_code == 200
    html = response.content.decode()
    for slug in ("bb-1", "bb-2", "bb-3"):
        assert f">{slug}</a>" in html
    assert "step_4_cost_centers" in html


def test_it_keeps_the_list_query_count_constant_in_the_number_of_batches(admin_client, eager):
    # given
    make_batch(["qa-1"], start=False)
    one = count_queries(admin_client, LIST_URL)
    # when
    for n in range(2, 8):
        make_batch([f"qa-{n}", f"qb-{n}"], start=False)
    seven = count_queries(admin_client, LIST_URL)
    # then
    assert one == seven, f"{one} queries for 1 batch, {seven} for 7"


def test_the_continue_action_continues_the_partial_tenants_only(admin_client, partial_batch):
    # given
    runs = dict(Tenant.objects.values_list("slug", "onboarding__runs__id"))
    # when
    response = admin_client.post(
        LIST_URL, {"action": "continue_unfinished_action", "_selected_action": [str(partial_batch.pk)]}, follow=True
    )
    # then
    assert response.status_code == 200
    assert any("1 tenant(s) continued" in str(m) for m in response.context["messages"])
    assert Tenant.objects.get(slug="bb-2").onboarding.status == OnboardingStatus.COMPLETED
    assert ProvisioningRun.objects.filter(onboarding__tenant__slug="bb-2").count() == 2
    for slug in ("bb-1", "bb-3"):
        assert list(ProvisioningRun.objects.filter(onboarding__tenant__slug=slug).values_list("id", flat=True)) == [
            runs[slug]
        ]
    partial_batch.refresh_from_db()
    assert partial_batch.finished_at is not None


def test_a_viewer_sees_batches_but_not_the_action(client, partial_batch):
    user = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__in=["view_provisioningbatch", "view_batchitem"]))
    client.force_login(user)
    response = client.get(LIST_URL)
    assert response.status_code == 200
    assert "continue_unfinished_action" not in response.content.decode()
