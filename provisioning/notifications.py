"""Notifications: a signed webhook call when an onboarding reaches an end state (COMPLETED, PARTIAL or FAILED).

Contract for receivers:

* ``POST`` with a JSON body (below) and the headers ``X-Moran-Event: onboarding.ended``,
  ``X-Moran-Signature: sha256=<hex HMAC-SHA256 of the raw body under MORAN_WEBHOOK_SECRET>`` and
  ``Idempotency-Key: <run id>:<status>``.
* Each run that ends produces one end state and so one key. Delivery is at least once: a call that got no 2xx is
  retried with exponential backoff (the same body, signature and key), so a receiver dedupes by the key.
* Any 2xx is success. 408, 425, 429 and 5xx, timeouts and connection errors are retried; any other answer is final
  (the receiver refused the call; retrying would not change its mind).

The call runs in its own Celery task, enqueued after the commit that ended the run: a slow or failing receiver never
holds a step, a lock or a transaction.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from urllib.parse import urlsplit

import requests
from django.conf import settings
from django.db import transaction

from provisioning.models import OnboardingStatus, ProvisioningRun
from tenants.models import Tenant

logger = logging.getLogger("moran.notifications")

END_STATES = frozenset({OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED})
EVENT = "onboarding.ended"
RETRYABLE_STATUSES = frozenset({408, 425, 429})


class WebhookTransientError(Exception):
    """The receiver could not take the call now; the task retries it with backoff."""


def webhook_url_for(tenant: Tenant) -> str:
    return tenant.webhook_url or settings.WEBHOOK_URL


def webhook_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def idempotency_key(*, run_id, status: str) -> str:
    return f"{run_id}:{status}"


def onboarding_run_ended(*, onboarding, run_id, status: str) -> None:
    """Called by the one writer, inside its transaction, when a write ended run ``run_id`` with the onboarding in
    ``status``. A run ends exactly once (the writer clears the run in charge under the row lock), so this is the one
    place an end state is announced; the delivery is enqueued only if that transaction commits."""
    if status not in END_STATES:
        return
    tenant = Tenant.objects.only("slug", "webhook_url").get(pk=onboarding.tenant_id)
    if not webhook_url_for(tenant):
        return
    kwargs = {"run_id": str(run_id), "status": str(status), "tenant": tenant.slug}
    transaction.on_commit(lambda: webhook_enqueue(**kwargs), robust=True)


def webhook_enqueue(*, run_id: str, status: str, tenant: str) -> None:
    from provisioning.tasks import webhook_deliver

    queue = settings.NOTIFICATIONS_QUEUE or settings.PROVISIONING_QUEUE
    try:
        webhook_deliver.apply_async(kwargs={"run_id": run_id, "status": status, "tenant": tenant}, queue=queue)
    except Exception as exc:  # the step that ended the run is recorded; a lost notification must not fail it
        logger.error("could not enqueue the %s webhook (%s)", status, type(exc).__name__, extra={"run_id": run_id})


def webhook_body(*, run: ProvisioningRun, status: str) -> bytes:
    """The body, built only from facts fixed when the run ended: every retry sends the same bytes."""
    tenant = run.onboarding.tenant
    payload = {
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
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def webhook_send(*, run_id: str, status: str, attempt: int = 1) -> bool:
    """POST the notification of one run's end state. Returns True when the receiver took it, False when it refused
    it for good (or no URL is configured any more); raises :class:`WebhookTransientError` when it is worth retrying."""
    run = ProvisioningRun.objects.select_related("onboarding__tenant").get(pk=run_id)
    tenant = run.onboarding.tenant
    url = webhook_url_for(tenant)
    log = {"tenant": tenant.slug, "run_id": str(run_id)}
    if not url:
        return False
    body = webhook_body(run=run, status=status)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "moran-webhook/1",
        "X-Moran-Event": EVENT,
        "Idempotency-Key": idempotency_key(run_id=run.id, status=status),
        "X-Moran-Delivery-Attempt": str(attempt),
    }
    if settings.WEBHOOK_SECRET:
        headers["X-Moran-Signature"] = webhook_signature(body, settings.WEBHOOK_SECRET)
    # Only the receiver's host is logged: a webhook URL's user info, path or query often holds a token.
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    try:
        # Redirects are not followed: a signed body goes only where it was configured to go (a 3xx is final).
        response = requests.post(
            url, data=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT, allow_redirects=False
        )
    except requests.RequestException as exc:
        logger.warning("webhook to %s failed (%s); will retry", where, type(exc).__name__, extra=log)
        raise WebhookTransientError(type(exc).__name__) from None
    if 200 <= response.status_code < 300:
        logger.info("webhook %s delivered to %s (attempt %d)", status, where, attempt, extra=log)
        return True
    if response.status_code >= 500 or response.status_code in RETRYABLE_STATUSES:
        logger.warning("webhook to %s answered %d; will retry", where, response.status_code, extra=log)
        raise WebhookTransientError(f"HTTP {response.status_code}")
    logger.error("webhook to %s refused with %d; not retried", where, response.status_code, extra=log)
    return False


def _iso(value):
    return value.isoformat().replace("+00:00", "Z") if value else None
