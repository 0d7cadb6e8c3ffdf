"""Webhook deliveries in the console: the list, a delivery's tries, and "resend"."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User
from django.urls import reverse
from django.utils import timezone

from provisioning.models import ProvisioningRun, WebhookDelivery
from provisioning.webhooks.delivery import webhook_delivery_send
from provisioning.webhooks.outbox import onboarding_run_ended
from tests.support.factories import make_tenant
from tests.support.queries import count_queries
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.django_db

LIST_URL = reverse("admin:provisioning_webhookdelivery_changelist")


@pytest.fixture
def receiver(settings):
    # The test receiver listens on loopback over http: allowed here, explicitly.
    settings.WEBHOOK_ALLOW_HTTP = True
    settings.WEBHOOK_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with WebhookReceiver() as r:
        yield r


def failed_delivery(tenant) -> WebhookDelivery:
    """A delivery the receiver refused for good (410), as the sender leaves it."""
    run = ProvisioningRun.objects.create(
        onboarding=tenant.onboarding, kind="start", outcome="completed", finished_at=timezone.now()
    )
    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="COMPLETED")
    after = webhook_delivery_send(delivery_id=delivery.pk)
    assert after.state == "failed"
    return after


def test_it_lists_a_failed_delivery_with_its_state_tries_and_last_answer(admin_client, receiver):
    # given
    tenant = make_tenant(slug="hooked", webhook_url=receiver.script("/gone?token=s3cr3t", [410]))
    delivery = failed_delivery(tenant)
    # when
    response = admin_client.get(LIST_URL)
    # then
    assert response.status_code == 200
    (row,) = response.context["cl"].result_list
    assert row.pk == delivery.pk
    page = response.content.decode()
    assert "hooked" in page and 'data-state="failed"' in page and "HTTP 410" in page
    assert "s3cr3t" not in page, "no page shows a webhook URL"


def test_it_shows_each_try_of_a_delivery(admin_client, receiver):
    # given
    tenant = make_tenant(webhook_url=receiver.script("/gone", [410]))
    delivery = failed_delivery(tenant)
    # when
    response = admin_client.get(reverse("admin:provisioning_webhookdelivery_change", args=[delivery.pk]))
    # then
    assert response.status_code == 200
    page = response.content.decode()
    assert delivery.idempotency_key in page
    (inline,) = response.context["inline_admin_formsets"]
    assert [form.original.number for form in inline] == [1]
    assert [(form.original.outcome, form.original.status_code) for form in inline] == [("refused", 410)]


def test_it_resends_a_failed_delivery_until_it_is_delivered(admin_client, receiver, eager, on_commit):
    # given: a delivery refused once; the receiver takes the next call
    tenant = make_tenant(webhook_url=receiver.script("/later", [410, 204]))
    delivery = failed_delivery(tenant)
    # when
    response = on_commit(
        admin_client.post, LIST_URL, {"action": "resend_action", "_selected_action": [delivery.pk]}, follow=True
    )
    # then
    assert response.status_code == 200
    assert "Resending 1 delivery." in [str(m) for m in response.context["messages"]]
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.last_status_code) == ("delivered", 2, 204)
    assert list(delivery.tries.values_list("number", "status_code")) == [(1, 410), (2, 204)]
    calls = receiver.calls_to("/later")
    assert [c.headers["Idempotency-Key"] for c in calls] == [delivery.idempotency_key] * 2


def test_a_view_only_user_sees_deliveries_but_cannot_resend(client, receiver):
    # given
    user = User.objects.create_user("viewer", password="pw-viewer-1", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_webhookdelivery"))
    client.force_login(user)
    delivery = failed_delivery(make_tenant(webhook_url=receiver.script("/gone", [410])))
    # when
    page = client.get(LIST_URL)
    posted = client.post(LIST_URL, {"action": "resend_action", "_selected_action": [delivery.pk]})
    # then
    assert page.status_code == 200 and "resend_action" not in page.content.decode()
    assert posted.status_code in (200, 302)
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("failed", 1)


def test_the_list_takes_as_many_queries_for_fifty_deliveries_as_for_one(admin_client, receiver):
    # given
    def delivery_for(n):
        failed_delivery(make_tenant(slug=f"bulk-{n}", webhook_url=receiver.script("/gone", [410])))

    delivery_for(0)
    one = count_queries(admin_client, LIST_URL)
    for n in range(1, 50):
        delivery_for(n)
    # when
    fifty = count_queries(admin_client, LIST_URL)
    # then
    assert one == fifty, f"{one} queries for 1 row, {fifty} for 50"
