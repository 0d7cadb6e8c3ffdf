"""The webhook outbox: the row is written with the end state, a send claims it, the dispatcher finds what was lost."""

from __future__ import annotations

import ast
import datetime as dt
from pathlib import Path
from unittest import mock

import pytest
from django.db import transaction
from django.utils import timezone

from celery_app import beat_schedule
from provisioning.models import ProvisioningRun, WebhookAttempt, WebhookDelivery
from provisioning.webhooks.delivery import Answer, webhook_attempt_record, webhook_delivery_claim, webhook_dispatch
from provisioning.webhooks.outbox import onboarding_run_ended, webhook_delivery_resend
from tests.support.factories import make_tenant

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.django_db


@pytest.fixture
def tenant(settings):
    return make_tenant(webhook_url="https://93.184.216.34/hook")


def ended_run(tenant):
    return ProvisioningRun.objects.create(
        onboarding=tenant.onboarding, kind="start", outcome="completed", finished_at=timezone.now()
    )


# --- the outbox row ------------------------------------------------------------------------------------------------
def test_it_writes_the_delivery_in_the_transaction_that_ended_the_run(tenant):
    # given
    run = ended_run(tenant)
    # when: the transaction that ended the run rolls back
    with pytest.raises(RuntimeError), transaction.atomic():
        onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="COMPLETED")
        assert WebhookDelivery.objects.filter(run=run).exists()
        raise RuntimeError("the end state is not committed")
    # then: no announcement of what never happened
    assert not WebhookDelivery.objects.exists()


def test_it_sends_only_once_the_transaction_commits(tenant, django_capture_on_commit_callbacks):
    # given
    run = ended_run(tenant)
    with mock.patch("celery.app.base.Celery.signature") as signature:
        # when
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="COMPLETED")
        # then: nothing sent before the commit; after it, one send of that row, by task name
        signature.assert_not_called()
        for callback in callbacks:
            callback()
    signature.assert_called_once_with(
        "provisioning.webhook_deliver", kwargs={"delivery_id": delivery.pk}, queue=mock.ANY
    )
    assert delivery.idempotency_key == f"{run.id}:COMPLETED"
    assert (delivery.state, delivery.attempts, delivery.max_attempts) == ("pending", 0, 11)
    assert delivery.payload["run"]["id"] == str(run.id) and delivery.payload["status"] == "COMPLETED"


def test_it_keeps_one_delivery_per_run_and_status(tenant, django_capture_on_commit_callbacks):
    run = ended_run(tenant)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        first = onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="PARTIAL")
        second = onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="PARTIAL")
    assert first.pk == second.pk and WebhookDelivery.objects.count() == 1
    assert len(callbacks) == 1


def test_it_announces_end_states_only(tenant):
    run = ended_run(tenant)
    assert onboarding_run_ended(onboarding=tenant.onboarding, run_id=run.id, status="CANCELLED") is None
    assert not WebhookDelivery.objects.exists()


def test_the_outbox_imports_no_layer_above_it():
    """The state writer imports the outbox: it must reach no module that imports the writer, at any depth (imports
    inside functions included)."""
    forbidden = {"provisioning.tasks", "provisioning.services", "provisioning.runs", "provisioning.recovery"}
    forbidden |= {"provisioning.state", "provisioning.webhooks.delivery"}
    seen, todo = set(), ["provisioning.webhooks.outbox"]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        path = ROOT / (module.replace(".", "/") + ".py")
        if not path.exists():
            path = ROOT / module.replace(".", "/") / "__init__.py"
        if not path.exists():
            continue  # a third-party module
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                todo += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                todo += [alias.name for alias in node.names]
    assert "provisioning.models" in seen
    assert not seen & forbidden


# --- the claim -----------------------------------------------------------------------------------------------------
def test_a_claimed_delivery_is_not_claimed_twice(tenant):
    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
    first = webhook_delivery_claim(delivery_id=delivery.pk, worker="w1")
    assert first is not None and first.number == 1
    assert webhook_delivery_claim(delivery_id=delivery.pk, worker="w2") is None
    assert WebhookAttempt.objects.filter(delivery=delivery).count() == 1


def test_an_expired_claim_is_taken_over_and_its_try_marked_interrupted(tenant):
    # given: a try whose worker died (its claim expired)
    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
    webhook_delivery_claim(delivery_id=delivery.pk, worker="dead")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(claimed_until=timezone.now() - dt.timedelta(seconds=1))
    # when
    second = webhook_delivery_claim(delivery_id=delivery.pk, worker="alive")
    # then
    assert second.number == 2
    assert list(delivery.tries.values_list("number", "outcome")) == [(1, "interrupted"), (2, "started")]


def test_a_late_answer_does_not_overwrite_the_try_that_took_over(tenant):
    # given: try 1 claimed, its claim expired, try 2 took over
    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
    first = webhook_delivery_claim(delivery_id=delivery.pk)
    WebhookDelivery.objects.filter(pk=delivery.pk).update(claimed_until=timezone.now() - dt.timedelta(seconds=1))
    webhook_delivery_claim(delivery_id=delivery.pk)
    # when: try 1's answer comes in after all
    after = webhook_attempt_record(attempt=first, answer=Answer(outcome="delivered", status_code=200), duration_ms=5)
    # then: try 2 still owns the delivery; try 1's answer is kept on its own row
    assert (after.state, after.attempts, after.delivered_at) == ("sending", 2, None)
    assert WebhookAttempt.objects.get(pk=first.pk).status_code == 200


# --- the dispatcher ------------------------------------------------------------------------------------------------
def test_the_dispatcher_sends_what_was_lost_and_nothing_else(tenant, settings, django_capture_on_commit_callbacks):
    # given: one delivery pending past the grace period, one just made, one claimed by a live sender, one whose
    # sender's claim expired, one delivered
    settings.WEBHOOK_DISPATCH_GRACE = 60
    now = timezone.now()

    def delivery(**fields):
        made = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
        WebhookDelivery.objects.filter(pk=made.pk).update(**fields)
        return made.pk

    with django_capture_on_commit_callbacks(execute=False):
        lost = delivery(next_attempt_at=now - dt.timedelta(seconds=61))
        delivery(next_attempt_at=now)
        delivery(
            state="sending", claimed_until=now + dt.timedelta(seconds=60), next_attempt_at=now - dt.timedelta(days=1)
        )
        expired = delivery(state="sending", claimed_until=now - dt.timedelta(seconds=1))
        delivery(state="delivered", next_attempt_at=now - dt.timedelta(days=1))
    # when
    with mock.patch("provisioning.webhooks.delivery.webhook_delivery_schedule") as schedule:
        sent = webhook_dispatch()
        again = webhook_dispatch()
    # then: the lost and the expired ones, once (a second pass waits another grace period)
    assert sorted(sent) == sorted([lost, expired])
    assert sorted(call.kwargs["delivery_id"] for call in schedule.call_args_list) == sorted([lost, expired])
    assert again == [], "what was sent waits another grace period before it is due again"
    # and the expired claim's try is recorded as interrupted; the delivery is pending again
    assert WebhookDelivery.objects.get(pk=expired).state == "pending"


def test_the_dispatcher_is_on_beat(settings):
    settings.WEBHOOK_DISPATCH_INTERVAL = 15
    entry = beat_schedule({"provisioning.webhook_dispatch"})["provisioning.webhook_dispatch"]
    assert (entry["task"], entry["schedule"]) == ("provisioning.webhook_dispatch", 15.0)
    settings.WEBHOOK_DISPATCH_INTERVAL = 0
    assert beat_schedule({"provisioning.webhook_dispatch"}) == {}


# --- resend --------------------------------------------------------------------------------------------------------
def test_resend_gives_a_fresh_allowance_of_tries(tenant, settings, django_capture_on_commit_callbacks):
    # given: a delivery that ran out of tries
    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
    WebhookDelivery.objects.filter(pk=delivery.pk).update(state="failed", attempts=11, max_attempts=11)
    # when
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        after = webhook_delivery_resend(delivery=delivery)
    # then
    assert (after.state, after.attempts, after.max_attempts) == ("pending", 11, 22)
    assert len(callbacks) == 1


def test_resend_leaves_a_delivery_being_sent_alone(tenant):
    from moran.errors import Conflict

    delivery = onboarding_run_ended(onboarding=tenant.onboarding, run_id=ended_run(tenant).id, status="COMPLETED")
    webhook_delivery_claim(delivery_id=delivery.pk)
    with pytest.raises(Conflict):
        webhook_delivery_resend(delivery=delivery)
