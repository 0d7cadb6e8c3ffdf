"""The sender and the dispatcher of webhook deliveries.

A send claims its delivery row first (``pending`` → ``sending`` under a row lock, with a claim that expires), records
the try as a ``WebhookAttempt`` row, calls the receiver outside any transaction, and records the answer in one
transaction guarded by the claim. So Moran calls once per try, whoever else holds a message for the same row; only a
worker that dies *during* a call can make the receiver see the same Idempotency-Key twice.

The dispatcher (on beat) sends again what no message will: rows pending past their due time plus a grace period, and
rows whose claim expired.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
from dataclasses import dataclass

import requests
from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from provisioning.models import WebhookAttempt, WebhookDelivery
from provisioning.webhooks.outbox import EVENT, webhook_delivery_schedule, webhook_url_for
from provisioning.webhooks.targets import WebhookTargetRefused, webhook_post

logger = logging.getLogger("moran.notifications")

State = WebhookDelivery.State
Outcome = WebhookAttempt.Outcome
RETRYABLE_STATUSES = frozenset({408, 425, 429})
DISPATCH_BATCH = 500


class WebhookTransientError(Exception):
    """The receiver could not take the call now; the task tries again with backoff."""


def send_time_limits() -> tuple[int, int]:
    """(soft, hard) limits of one send: a request's timeout bounds each read, not the whole answer."""
    return max(30, int(4 * settings.WEBHOOK_TIMEOUT)), max(60, int(6 * settings.WEBHOOK_TIMEOUT))


def claim_ttl() -> dt.timedelta:
    # Longer than a send may live (its hard time limit): a claim expires only when its worker is gone.
    return dt.timedelta(seconds=send_time_limits()[1] + 30)


def webhook_signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(delivery: WebhookDelivery) -> bytes:
    return json.dumps(delivery.payload, sort_keys=True, separators=(",", ":")).encode()


def webhook_retry_deadline(attempts: int) -> dt.timedelta:
    """The longest the task's own (jittered, capped) backoff may wait after try ``attempts``: past it plus the
    dispatcher's grace, the retry message is taken for lost."""
    return dt.timedelta(seconds=min(settings.WEBHOOK_RETRY_BACKOFF_MAX, settings.WEBHOOK_RETRY_BACKOFF * 2**attempts))


# --- claim ---------------------------------------------------------------------------------------------------------
def webhook_delivery_claim(*, delivery_id: int, worker: str = "") -> WebhookAttempt | None:
    """Take a delivery for one try: returns its new attempt row, or None when it is delivered, failed, or claimed by
    a live sender. A claim that expired (its worker died mid-try) is taken over, its try marked interrupted."""
    now = timezone.now()
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(Q(state=State.PENDING) | Q(state=State.SENDING, claimed_until__lt=now), pk=delivery_id)
            .first()
        )
        if delivery is None:
            return None
        if delivery.state == State.SENDING and not _release_expired(delivery, now=now):
            return None
        delivery.state = State.SENDING
        delivery.attempts += 1
        delivery.claimed_until = now + claim_ttl()
        delivery.save()
        attempt = WebhookAttempt.objects.create(
            delivery=delivery, number=delivery.attempts, started_at=now, worker=worker
        )
    return attempt


def _release_expired(delivery: WebhookDelivery, *, now: dt.datetime) -> bool:
    """Under the row lock, a delivery whose sender's claim expired: its try was interrupted (the worker died). Back
    to pending, or failed when that was its last try. Returns whether it may be tried again."""
    WebhookAttempt.objects.filter(delivery=delivery, finished_at__isnull=True).update(
        outcome=Outcome.INTERRUPTED, finished_at=now, error="its worker stopped before the answer"
    )
    delivery.claimed_until = None
    if delivery.attempts >= delivery.max_attempts:
        delivery.state, delivery.last_error = State.FAILED, "the last try was interrupted"
    else:
        delivery.state, delivery.next_attempt_at = State.PENDING, now
    delivery.save()
    return delivery.state == State.PENDING


# --- one try -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Answer:
    outcome: str
    status_code: int | None = None
    error: str = ""


def webhook_delivery_send(*, delivery_id: int, worker: str = "") -> WebhookDelivery | None:
    """One try of a delivery: claim, call, record. Returns the delivery as the try left it (``pending`` means worth
    trying again), or None when there was nothing to try."""
    attempt = webhook_delivery_claim(delivery_id=delivery_id, worker=worker)
    if attempt is None:
        return None
    delivery = attempt.delivery
    started = time.monotonic()
    # The call runs outside any transaction and lock: a slow receiver holds nothing but this worker.
    answer = _call(delivery, attempt_number=attempt.number)
    return webhook_attempt_record(attempt=attempt, answer=answer, duration_ms=int(1000 * (time.monotonic() - started)))


def _call(delivery: WebhookDelivery, *, attempt_number: int) -> Answer:
    url = webhook_url_for(delivery.tenant)
    log = {"tenant": delivery.tenant.slug, "run_id": str(delivery.run_id)}
    if not url:
        return Answer(Outcome.BLOCKED, error="no webhook URL is configured")
    body = webhook_body(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "moran-webhook/1",
        "X-Moran-Event": delivery.event or EVENT,
        "Idempotency-Key": delivery.idempotency_key,
        "X-Moran-Delivery-Attempt": str(attempt_number),
    }
    if settings.WEBHOOK_SECRET:
        headers["X-Moran-Signature"] = webhook_signature(body, settings.WEBHOOK_SECRET)
    try:
        target, response = webhook_post(url, data=body, headers=headers, timeout=settings.WEBHOOK_TIMEOUT)
    except WebhookTargetRefused as exc:
        logger.error("webhook refused before sending: %s", exc, extra=log)
        return Answer(Outcome.BLOCKED, error=f"target not allowed: {exc}"[:300])
    except (requests.RequestException, SoftTimeLimitExceeded) as exc:
        # The type only: a requests message quotes the URL, which may carry a token.
        logger.warning("webhook call failed (%s); will retry", type(exc).__name__, extra=log)
        return Answer(Outcome.RETRY, error=type(exc).__name__)
    code = response.status_code
    if 200 <= code < 300:
        logger.info("webhook %s delivered to %s (attempt %d)", delivery.status, target.where, attempt_number, extra=log)
        return Answer(Outcome.DELIVERED, status_code=code)
    if code >= 500 or code in RETRYABLE_STATUSES:
        logger.warning("webhook to %s answered %d; will retry", target.where, code, extra=log)
        return Answer(Outcome.RETRY, status_code=code, error=f"HTTP {code}")
    # 3xx included: redirects are not followed, and retrying would not change the receiver's mind.
    logger.error("webhook to %s refused with %d; not retried", target.where, code, extra=log)
    return Answer(Outcome.REFUSED, status_code=code, error=f"HTTP {code}")


def webhook_attempt_record(*, attempt: WebhookAttempt, answer: Answer, duration_ms: int) -> WebhookDelivery:
    """The try's answer on its row, and what it means for the delivery, in one transaction."""
    now = timezone.now()
    delivery = attempt.delivery
    with transaction.atomic():
        WebhookAttempt.objects.filter(pk=attempt.pk).update(
            outcome=answer.outcome,
            finished_at=now,
            duration_ms=duration_ms,
            status_code=answer.status_code,
            error=answer.error,
        )
        fields = {"last_status_code": answer.status_code, "last_error": answer.error, "claimed_until": None}
        if answer.outcome == Outcome.DELIVERED:
            fields.update(state=State.DELIVERED, delivered_at=now)
        elif answer.outcome == Outcome.RETRY and attempt.number < delivery.max_attempts:
            fields.update(state=State.PENDING, next_attempt_at=now + webhook_retry_deadline(attempt.number))
        else:
            fields.update(state=State.FAILED)
        # Guarded by the claim: had it expired and been taken over, the newer try owns the row.
        WebhookDelivery.objects.filter(pk=delivery.pk, state=State.SENDING, attempts=attempt.number).update(
            **fields, updated_at=now
        )
    delivery.refresh_from_db()
    return delivery


# --- the dispatcher ------------------------------------------------------------------------------------------------
def webhook_dispatch(*, limit: int = DISPATCH_BATCH) -> list[int]:
    """Send again the deliveries no message will: pending past due plus the grace period (their message was lost),
    or claimed by a sender that is gone. Two passes at once are safe (rows are locked, skipped, and claimed again by
    the send); returns the ids sent."""
    now = timezone.now()
    due = Q(state=State.PENDING, next_attempt_at__lte=now - dt.timedelta(seconds=settings.WEBHOOK_DISPATCH_GRACE))
    expired = Q(state=State.SENDING, claimed_until__lt=now)
    with transaction.atomic():
        rows = list(
            WebhookDelivery.objects.select_for_update(skip_locked=True)
            .filter(due | expired)
            .order_by("next_attempt_at")[:limit]
        )
        ids = []
        for delivery in rows:
            if delivery.state == State.SENDING and not _release_expired(delivery, now=now):
                continue
            ids.append(delivery.pk)
        # Due again only after another grace period: a backlog in the queue is not sent twice by every pass.
        WebhookDelivery.objects.filter(pk__in=ids).update(next_attempt_at=now)
        for pk in ids:
            webhook_delivery_schedule(delivery_id=pk)
    if ids:
        logger.warning("dispatcher re-sent %d webhook deliveries", len(ids))
    return ids
