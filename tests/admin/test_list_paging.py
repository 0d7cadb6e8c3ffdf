"""The admin lists at size: query counts flat in the page size, deep pages read keys first, the step log filter
lists the steps without reading the log."""

import pytest
from django.contrib import admin
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from moran.paging import KeysFirstPaginator
from provisioning.models import Onboarding, ProvisioningRun, StepLog, WebhookDelivery
from provisioning.steps import STEP_NAMES
from tenants.models import Tenant
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db

LISTS = [
    (Onboarding, "admin:provisioning_onboarding_changelist"),
    (Tenant, "admin:tenants_tenant_changelist"),
    (StepLog, "admin:provisioning_steplog_changelist"),
    (WebhookDelivery, "admin:provisioning_webhookdelivery_changelist"),
]


@pytest.fixture
def tenants():
    made = [make_tenant(slug=f"row-{n:02d}", company_name=f"Row {n} Ltd", abbr=f"RW{n}") for n in range(8)]
    for tenant in made:
        for step in STEP_NAMES[:3]:
            StepLog.objects.create(onboarding=tenant.onboarding, step=step, attempt=1, message=f"{step} line")
        run = ProvisioningRun.objects.create(onboarding=tenant.onboarding, kind="start", outcome="completed")
        WebhookDelivery.objects.create(
            tenant=tenant,
            run=run,
            event="onboarding.finished",
            status="COMPLETED",
            idempotency_key=f"{run.id}:COMPLETED",
            payload={"status": "COMPLETED", "padding": "x" * 500},
            max_attempts=6,
            next_attempt_at=timezone.now(),
        )
    return made


def count(client, url, **params):
    with CaptureQueriesContext(connection) as ctx:
        response = client.get(url, params)
    assert response.status_code == 200
    return len(ctx.captured_queries), response


@pytest.mark.parametrize("model, url_name", LISTS)
def test_it_lists_with_the_same_queries_whatever_the_page_size(admin_client, tenants, monkeypatch, model, url_name):
    # given deep pages read keys first, as on a big table
    monkeypatch.setattr(KeysFirstPaginator, "deep_offset", 0)
    model_admin = admin.site._registry[model]
    url = reverse(url_name)
    # when
    monkeypatch.setattr(model_admin, "list_per_page", 2)
    small, _ = count(admin_client, url, p=1)
    monkeypatch.setattr(model_admin, "list_per_page", 5)
    large, response = count(admin_client, url, p=1)
    # then
    assert len(response.context["cl"].result_list) == 5
    assert small == large


def test_a_deep_step_log_page_shows_the_lines_the_plain_ordering_puts_there(admin_client, tenants, monkeypatch):
    monkeypatch.setattr(KeysFirstPaginator, "deep_offset", 0)
    monkeypatch.setattr(admin.site._registry[StepLog], "list_per_page", 4)
    _, response = count(admin_client, reverse("admin:provisioning_steplog_changelist"), p=3)
    expected = list(StepLog.objects.order_by("-id").values_list("id", flat=True)[8:12])
    assert [line.id for line in response.context["cl"].result_list] == expected


def test_the_step_filter_offers_every_step_and_filters_on_it(admin_client, tenants):
    _, response = count(admin_client, reverse("admin:provisioning_steplog_changelist"), step=STEP_NAMES[1])
    offered = [
        choice["display"]
        for spec in response.context["cl"].filter_specs
        if spec.title == "step"
        for choice in spec.choices(response.context["cl"])
    ]
    assert offered[1:] == list(STEP_NAMES)
    assert {line.step for line in response.context["cl"].result_list} == {STEP_NAMES[1]}


@pytest.mark.parametrize(
    "url_name, unread",
    [
        ("admin:provisioning_steplog_changelist", '"provisioning_onboarding"."provisioning_steps"'),
        ("admin:provisioning_webhookdelivery_changelist", '"provisioning_webhookdelivery"."payload"'),
    ],
)
def test_a_list_leaves_the_documents_it_does_not_show_unread(admin_client, tenants, url_name, unread):
    # when
    with CaptureQueriesContext(connection) as ctx:
        response = admin_client.get(reverse(url_name))
    # then the page lists its rows without reading the JSON documents of the rows it joins or shows
    assert response.status_code == 200 and len(response.context["cl"].result_list) > 0
    assert not [q["sql"] for q in ctx.captured_queries if unread in q["sql"]]
