"""One Celery task per step, named after it (Flower shows ``provisioning.step_1_company``).

Tasks are thin: they take ids, and :func:`provisioning.execution.step_execute` does the work and records it. A task
of a run that is no longer in charge does nothing and stops its chain (``Ignore``); a permanently failed required
step stops the chain by raising :class:`StepFailedError`; a transient error is retried with backoff by
``self.retry`` (which keeps the rest of the chain attached).
"""

from celery import shared_task
from celery.exceptions import Ignore
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from provisioning.execution import StepOutcome, retry_countdown, step_execute
from provisioning.recovery import sweep as sweep_pass
from provisioning.runs import StepFailedError
from provisioning.steps import STEP_NAMES


def _make_step_task(step_name: str):
    def step_task(self, onboarding_id, run_id, tenant="", waits=0):
        # Celery counts every retry; the deliveries that only waited for engine capacity (``waits``) are not
        # attempts, so they count neither towards the step's retries nor towards its maximum.
        retries = self.request.retries - waits
        try:
            outcome = step_execute(
                onboarding_id=onboarding_id,
                run_id=run_id,
                step_name=step_name,
                retries=retries,
                max_retries=self.max_retries,
            )
        except (OperationalError, InterfaceError) as exc:
            # Our database went away longer than a write's reconnects: failing the task would acknowledge the
            # message and strand the run. Send it again later on a fresh connection; a step that had begun is seen
            # as interrupted by the next attempt.
            connection.close()
            # Bounded all the same (about half an hour with the default backoff): past it the sweeper takes over.
            raise self.retry(exc=exc, countdown=retry_countdown(retries), max_retries=30 + waits) from exc
        if outcome.kind in (StepOutcome.STALE, StepOutcome.DUPLICATE):
            raise Ignore()
        if outcome.kind == StepOutcome.RETRY:
            raise self.retry(countdown=outcome.countdown, max_retries=self.max_retries + waits)
        if outcome.kind == StepOutcome.WAIT:
            # Back to the queue, the rest of the chain attached (``retry`` keeps it), without using an attempt; and
            # never "too many" (Celery reads max_retries=None as the task's default, so the limit is set past it).
            raise self.retry(
                countdown=outcome.countdown,
                max_retries=self.request.retries + 1,
                kwargs={**self.request.kwargs, "waits": waits + 1},
            )
        if outcome.kind == StepOutcome.FAILED:
            raise StepFailedError(f"{tenant}: {step_name} failed: {outcome.message}")
        return {"tenant": tenant, "step": step_name, "outcome": outcome.kind, "detail": outcome.message}

    step_task.__name__ = step_task.__qualname__ = step_name
    return shared_task(
        bind=True,
        name=f"provisioning.{step_name}",
        # Steps are idempotent, so a message is acknowledged only once the step ran, and a message whose worker died
        # is redelivered rather than lost.
        acks_late=True,
        reject_on_worker_lost=True,
        max_retries=settings.STEP_MAX_RETRIES,
        soft_time_limit=settings.STEP_SOFT_TIME_LIMIT,
        time_limit=settings.STEP_TIME_LIMIT,
        # An expected outcome, not a crash: logged without a traceback.
        throws=(StepFailedError,),
    )(step_task)


STEP_TASKS = {name: _make_step_task(name) for name in STEP_NAMES}
globals().update(STEP_TASKS)


# --- Notifications ------------------------------------------------------------------------------------
from provisioning.models import WebhookDelivery  # noqa: E402
from provisioning.webhooks.delivery import (  # noqa: E402
    WebhookTransientError,
    send_time_limits,
    webhook_delivery_send,
    webhook_dispatch,
)


@shared_task(
    bind=True,
    name="provisioning.webhook_deliver",
    # Declarative retries: exponential backoff with full jitter, capped. The delivery row counts the tries and ends
    # them (failed) at its own maximum; the receiver dedupes by Idempotency-Key, so a redelivered message is safe.
    autoretry_for=(WebhookTransientError,),
    retry_backoff=settings.WEBHOOK_RETRY_BACKOFF,
    retry_backoff_max=settings.WEBHOOK_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=settings.WEBHOOK_MAX_RETRIES,
    acks_late=True,
    reject_on_worker_lost=True,
    soft_time_limit=send_time_limits()[0],
    time_limit=send_time_limits()[1],
)
def webhook_deliver(self, *, delivery_id):
    """One try of webhook delivery ``delivery_id``; nothing when it is done or another sender holds it."""
    delivery = webhook_delivery_send(delivery_id=delivery_id, worker=self.request.hostname or "")
    if delivery is not None and delivery.state == WebhookDelivery.State.PENDING:
        raise WebhookTransientError(delivery.last_error)


@shared_task(name="provisioning.webhook_dispatch", acks_late=False, ignore_result=True)
def webhook_dispatch_task():
    """Send the deliveries whose message was lost (on beat, every ``MORAN_WEBHOOK_DISPATCH_INTERVAL`` seconds)."""
    return webhook_dispatch()


@shared_task(name="provisioning.sweep", acks_late=False, ignore_result=True)
def sweep():
    """One pass of the sweeper (on beat, every ``MORAN_SWEEP_INTERVAL`` seconds). Two at once are safe."""
    return [str(action) for action in sweep_pass()]


@shared_task(name="provisioning.batch_advance", acks_late=False, ignore_result=True)
def batch_advance(batch_id=None):
    """Start a batch's next tenants (sent when one of its runs ends), or, with no id (beat), of every unfinished
    batch. Two at once are safe: the batch row is locked."""
    from provisioning.batches import batch_advance as advance
    from provisioning.batches import batch_advance_all

    if batch_id is None:
        return batch_advance_all()
    return len(advance(batch_id=batch_id))
