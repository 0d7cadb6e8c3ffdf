"""Notifications: a signed webhook call when an onboarding reaches an end state (COMPLETED, PARTIAL or FAILED), through
a transactional outbox.

Contract for receivers:

* ``POST`` with a JSON body and the headers ``X-Moran-Event: onboarding.ended``,
  ``X-Moran-Signature: sha256=<hex HMAC-SHA256 of the raw body under MORAN_WEBHOOK_SECRET>``,
  ``Idempotency-Key: <run id>:<status>`` and ``X-Moran-Delivery-Attempt: <n>``.
* Each run that ends produces one end state and so one key. Delivery is at least once: a call that got no 2xx is
  tried again with exponential backoff (the same body, signature and key), so a receiver dedupes by the key.
* Any 2xx is success. 408, 425, 429 and 5xx, timeouts and connection errors are retried; any other answer is final.

How: the writer that ends a run calls :func:`onboarding_run_ended` inside its transaction, which adds a
``WebhookDelivery`` row to that same transaction and asks for a send once it commits. The send itself
(:mod:`provisioning.webhooks.delivery`) claims the row, so two senders never both call; if the send message is lost (a
worker dying after the commit, a broker losing it), the periodic dispatcher sends what is still pending.

This module is imported by the state writer: it imports models and settings only, and sends tasks by name.
"""

from __future__ import annotations

import datetime as dt
import logging

from celery import current_app
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from moran.errors import Conflict
from provisioning.models import OnboardingStatus, ProvisioningRun, WebhookDelivery
from tenants.models import Tenant

logger = logging.getLogger("moran.notifications")

END_STATES = frozenset({OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED})
EVENT = "onboarding.ended"
SEND_TASK = "provisioning.webhook_deliver"


def webhook_url_for(tenant: Tenant) -> str:
    return tenant.webhook_url or settings.WEBHOOK_URL


def idempotency_key(*, run_id, status: str) -> str:
    return f"{run_id}:{status}"


def onboarding_run_ended(*, onboarding, run_id, status: str) -> WebhookDelivery | None:
    """Called by the one writer, inside its transaction, when a write ended run ``run_id`` with the onboarding in
    ``status``. A run ends exactly once (the writer clears the run in charge under the row lock), so this is the one
    place an end state is announced: its delivery row commits or rolls back with the end state itself."""
    if status not in END_STATES:
        return None
    tenant = Tenant.objects.only("id", "slug", "name", "webhook_url").get(pk=onboarding.tenant_id)
    if not webhook_url_for(tenant):
        return None
    run = ProvisioningRun.objects.filter(pk=run_id).first()
    if run is None:  # a run with no row (hand-made data): nothing to announce, and the end state must still commit
        logger.error("run %s ended with no run row; its end state is not announced", run_id)
        return None
    key = idempotency_key(run_id=run.id, status=status)
    delivery, created = WebhookDelivery.objects.get_or_create(
        idempotency_key=key,
        defaults={
            "tenant": tenant,
            "run": run,
            "event": EVENT,
            "status": str(status),
            "payload": webhook_payload(tenant=tenant, run=run, status=str(status)),
            "next_attempt_at": timezone.now(),
            "max_attempts": settings.WEBHOOK_MAX_RETRIES + 1,
        },
    )
    if created:
        webhook_delivery_schedule(delivery_id=delivery.pk)
    return delivery


def webhook_payload(*, tenant: Tenant, run: ProvisioningRun, status: str) -> dict:
    """The body's facts, fixed when the run ended (the writer has set the run's outcome and end time already)."""
    return {
        "event": EVENT,
        "idempotency_key": idempotency_key(run_id=run.id, status=status),
        "tenant": {"id": str(tenant.id), "slug": tenant.slug, "name": tenant.name},
        "status": status,
        "run": {
            "id": str(run.id),
            "kind": run.kind,
            "outcome": run.outcome,
            "started_at": _iso(run.created_at),
            "finished_at": _iso(run.finished_at),
        },
    }


def webhook_delivery_schedule(*, delivery_id: int) -> None:
    """Send the delivery once the current transaction commits (at once outside one). A send that cannot be enqueued
    is not an error here: the row is pending, and the dispatcher will send it."""

    def enqueue():
        queue = settings.NOTIFICATIONS_QUEUE or settings.PROVISIONING_QUEUE
        try:
            # By name: the task module imports the sender, which must not be imported from the state writer's side.
            app = current_app
            if SEND_TASK not in app.tasks:
                # Task modules are autodiscovered when a worker starts; a web process loads them here, so that the
                # embedded (eager) mode runs the send in-process instead of handing it to a broker it does not have.
                app.loader.import_default_modules()
            app.signature(SEND_TASK, kwargs={"delivery_id": delivery_id}, queue=queue).apply_async()
        except Exception as exc:  # the end state is recorded; a broker hiccup must not fail the write that ended it
            # The type only: in the embedded mode the send runs here, and a message might quote the URL.
            logger.warning(
                "could not send webhook delivery %s (%s); the dispatcher will", delivery_id, type(exc).__name__
            )

    transaction.on_commit(enqueue, robust=True)


def webhook_delivery_resend(*, delivery: WebhookDelivery) -> WebhookDelivery:
    """An operator's resend: the delivery goes back to pending, with a fresh allowance of tries, and is sent now
    (a delivered one too: the receiver dedupes by its key). One being sent at this moment is left alone: its
    sender owns it until the try ends."""
    with transaction.atomic():
        updated = (
            WebhookDelivery.objects.filter(pk=delivery.pk)
            .exclude(state=WebhookDelivery.State.SENDING)
            .update(
                state=WebhookDelivery.State.PENDING,
                next_attempt_at=timezone.now(),
                claimed_until=None,
                max_attempts=F("attempts") + settings.WEBHOOK_MAX_RETRIES + 1,
            )
        )
        if not updated:
            raise Conflict(f"Webhook delivery {delivery.pk} is being sent at this moment; try again when it ends")
        webhook_delivery_schedule(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    return delivery


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None
