"""One Celery task per step, named after it (Flower shows ``provisioning.step_1_company``).

Tasks are thin: they take ids, and :func:`provisioning.services.step_execute` does the work and records it. A task
of a run that is no longer in charge does nothing and stops its chain (``Ignore``); a permanently failed required
step stops the chain by raising :class:`StepFailedError`; a transient error is retried with backoff by
``self.retry`` (which keeps the rest of the chain attached).
"""

from celery import shared_task
from celery.exceptions import Ignore
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from provisioning.services import retry_countdown, step_execute
from provisioning.steps import STEP_NAMES


class StepFailedError(Exception):
    """A required step failed permanently; the state is recorded, the chain stops here."""


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
        if outcome.kind in ("stale", "duplicate"):
            raise Ignore()
        if outcome.kind == "retry":
            raise self.retry(countdown=outcome.countdown, max_retries=self.max_retries + waits)
        if outcome.kind == "wait":
            # Back to the queue, the rest of the chain attached (``retry`` keeps it), without using an attempt; and
            # never "too many" (Celery reads max_retries=None as the task's default, so the limit is set past it).
            raise self.retry(
                countdown=outcome.countdown,
                max_retries=self.request.retries + 1,
                kwargs={**self.request.kwargs, "waits": waits + 1},
            )
        if outcome.kind == "failed":
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
from celery.exceptions import SoftTimeLimitExceeded  # noqa: E402

from provisioning.notifications import WebhookTransientError, webhook_send  # noqa: E402


@shared_task(
    bind=True,
    name="provisioning.webhook_deliver",
    # Declarative retries: exponential backoff with full jitter, capped; the receiver dedupes by Idempotency-Key,
    # so a retry (or a redelivery after a lost worker) is safe.
    # A receiver that trickles its answer past the soft time limit is as unavailable as one that answers 503.
    autoretry_for=(WebhookTransientError, SoftTimeLimitExceeded),
    retry_backoff=settings.WEBHOOK_RETRY_BACKOFF,
    retry_backoff_max=settings.WEBHOOK_RETRY_BACKOFF_MAX,
    retry_jitter=True,
    max_retries=settings.WEBHOOK_MAX_RETRIES,
    acks_late=True,
    reject_on_worker_lost=True,
    # A request's timeout bounds each read, not the whole answer; these bound the whole call.
    soft_time_limit=max(30, int(4 * settings.WEBHOOK_TIMEOUT)),
    time_limit=max(60, int(6 * settings.WEBHOOK_TIMEOUT)),
)
def webhook_deliver(self, *, run_id, status, tenant=""):
    """Notify the tenant's webhook that run ``run_id`` ended with the onboarding in ``status``."""
    webhook_send(run_id=run_id, status=status, attempt=self.request.retries + 1)


@shared_task(name="provisioning.sweep", acks_late=False, ignore_result=True)
def sweep():
    """One pass of the sweeper (on beat, every ``MORAN_SWEEP_INTERVAL`` seconds). Two at once are safe."""
    from provisioning.recovery import sweep as sweep_pass

    return [str(action) for action in sweep_pass()]
