"""The run lifecycle: create, start, continue, retry, cancel, resume, and sending a run's chain to the broker.

The API, the admin, the CLI and the sweeper all call these. A run's chain is sent by task name, so this module never
imports the tasks (they import what is below them, never the reverse).
"""

from __future__ import annotations

import logging

from celery import chain, current_app
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from moran.errors import NoActiveRun, NothingToContinue, RunActive
from provisioning.attempts import attempt_close
from provisioning.models import (
    Onboarding,
    OnboardingStatus,
    ProvisioningRun,
    RunKind,
    StepAttempt,
    StepLog,
    StepStatus,
)
from provisioning.state import (
    ACTIVE,
    ANY_RUN,
    DONE,
    Changed,
    derive,
    initial_steps,
    now_iso,
    onboarding_write,
    run_end,
    step_log_row,
)
from provisioning.steps import STEP_NAMES
from tenants.models import Tenant

logger = logging.getLogger("moran.provisioning")


class StepFailedError(Exception):
    """A required step failed permanently: its task raises this to stop the chain (the state is recorded)."""


def onboarding_create(*, tenant: Tenant) -> Onboarding:
    steps = initial_steps()
    derived = derive(steps, run_active=False, previous_status=OnboardingStatus.PENDING)
    onboarding, _ = Onboarding.objects.get_or_create(
        tenant=tenant,
        defaults={"provisioning_steps": steps, "status": derived.status, "current_step": derived.current_step},
    )
    return onboarding


def first_incomplete(steps: dict) -> int | None:
    """The index of the first step that is neither completed nor skipped, or None."""
    return next((i for i, name in enumerate(STEP_NAMES) if steps[name]["status"] not in DONE), None)


def _run_begin(onboarding: Onboarding, *, kind: str, start_index: int, requested_by: str) -> ProvisioningRun:
    """Inside a locked write: claim the onboarding for a new run, sent to the broker once the write commits."""
    run = ProvisioningRun.objects.create(
        onboarding=onboarding, kind=kind, start_index=start_index, requested_by=requested_by[:150]
    )
    onboarding.run_id = run.id
    onboarding.started_at = timezone.now()
    onboarding.finished_at = None
    # No status to set: with a run in charge the writer derives IN_PROGRESS (which also clears CANCELLED).
    transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return run


def _pending(entry: dict) -> dict:
    return {**entry, "status": StepStatus.PENDING.value, "error": None, "started_at": None, "finished_at": None}


def _begin(onboarding: Onboarding, *, kind: str, requested_by: str, choose_start, reset) -> ProvisioningRun:
    def change(ob, steps):
        # Claim, don't check-then-act: decided under the row lock, so two clicks start one run.
        if ob.run_id is not None:
            raise RunActive(f"A run is already active for tenant '{ob.tenant.slug}' (run {ob.run_id})")
        start = choose_start(ob, steps)
        for name in STEP_NAMES[start:]:
            if reset(steps[name]):
                steps[name] = _pending(steps[name])
        run = _run_begin(ob, kind=kind, start_index=start, requested_by=requested_by)
        return Changed(steps, result=run)

    by = f" by {requested_by}" if requested_by else ""
    written = onboarding_write(
        onboarding.pk, run_id=ANY_RUN, change=change, log=f"{kind} requested{by}: a new run starts"
    )
    return written.result


def run_resume(ob: Onboarding, steps: dict, *, requested_by: str) -> ProvisioningRun | None:
    """Inside a locked write (the sweeper's): end the run in charge as superseded and begin a new one from the first
    step that is not completed or skipped, exactly as continue would; fencing then discards any late message of the
    old run. Returns None (and ends the run as completed) when every step is done already."""
    start = first_incomplete(steps)
    if start is None:
        run_end(ob, ProvisioningRun.Outcome.COMPLETED)
        return None
    for name in STEP_NAMES[start:]:
        if steps[name]["status"] != StepStatus.COMPLETED:
            steps[name] = {**steps[name], "status": StepStatus.PENDING.value, "started_at": None, "finished_at": None}
    run_end(ob, ProvisioningRun.Outcome.SUPERSEDED)
    return _run_begin(ob, kind=RunKind.CONTINUE, start_index=start, requested_by=requested_by)


def onboarding_start(*, onboarding: Onboarding, requested_by: str = "") -> ProvisioningRun:
    """The first run of a new onboarding, from step 0."""

    def choose(ob, steps):
        if ob.status != OnboardingStatus.PENDING:
            raise RunActive(f"Provisioning of '{ob.tenant.slug}' has already started; use continue or retry")
        return 0

    with transaction.atomic():
        return _begin(
            onboarding, kind=RunKind.START, requested_by=requested_by, choose_start=choose, reset=lambda e: True
        )


def onboarding_continue(*, onboarding: Onboarding, requested_by: str = "") -> ProvisioningRun:
    """A new run from the first step that is not completed or skipped. Steps before it are not run again, and a
    skipped optional step after it stays skipped."""

    def choose(ob, steps):
        start = first_incomplete(steps)
        if start is None:
            raise NothingToContinue(f"Every step of '{ob.tenant.slug}' is completed: nothing to continue")
        return start

    with transaction.atomic():
        return _begin(
            onboarding,
            kind=RunKind.CONTINUE,
            requested_by=requested_by,
            choose_start=choose,
            reset=lambda e: e["status"] != StepStatus.COMPLETED,
        )


def onboarding_retry(*, onboarding: Onboarding, requested_by: str = "") -> ProvisioningRun:
    """Every step again from step 0 in a new run; the steps find what exists and create only what is missing.
    Attempts keep counting across runs."""
    with transaction.atomic():
        return _begin(
            onboarding,
            kind=RunKind.RETRY,
            requested_by=requested_by,
            choose_start=lambda ob, s: 0,
            reset=lambda e: True,
        )


CANCELLED_ERROR = {"type": "Cancelled", "message": "cancelled while running", "engine_status": None}


def onboarding_cancel(*, onboarding: Onboarding, requested_by: str = "") -> Onboarding:
    """Stop the active run: its remaining steps do not run (their tasks find the run no longer in charge). A step
    already talking to the engine finishes there, but its result is not recorded; continue runs it again."""

    def change(ob, steps):
        if ob.run_id is None:
            raise NoActiveRun(f"No run is active for tenant '{ob.tenant.slug}': nothing to cancel")
        for name, entry in steps.items():
            if entry["status"] == StepStatus.RUNNING:
                # Its worker's result will not be recorded (fenced): this is the attempt's end.
                step_log_row(ob, name, entry["attempts"], f"attempt {entry['attempts']} cancelled while running")
                attempt_close(
                    ob,
                    entry,
                    step=name,
                    outcome=StepAttempt.Outcome.CANCELLED,
                    ended_by=StepAttempt.EndedBy.OPERATOR,
                    error=CANCELLED_ERROR,
                )
            if entry["status"] in ACTIVE:
                steps[name] = {
                    **entry,
                    "status": StepStatus.PENDING.value,
                    "finished_at": now_iso(),
                    "error": CANCELLED_ERROR,
                }
        run_end(ob, ProvisioningRun.Outcome.CANCELLED)
        ob.status = OnboardingStatus.CANCELLED
        return steps

    by = f" by {requested_by}" if requested_by else ""
    written = onboarding_write(
        onboarding.pk, run_id=ANY_RUN, change=change, log=f"run cancelled{by}", log_level=StepLog.Level.WARNING
    )
    return written.onboarding


def run_signature(run: ProvisioningRun):
    """The canvas of a run: a chain of the step tasks from its start index, each carrying the onboarding id, the run
    id and (for Flower and logs) the tenant's slug. Sent by task name: the tasks sit above this module."""
    slug = run.onboarding.tenant.slug
    queue = settings.PROVISIONING_QUEUE
    return chain(
        current_app.signature(
            f"provisioning.{name}", args=(run.onboarding_id, str(run.id)), kwargs={"tenant": slug}, immutable=True
        ).set(queue=queue)
        for name in STEP_NAMES[run.start_index :]
    )


def run_enqueue(*, run_id) -> bool:
    """Send a committed run to the broker (called after commit). A broker that cannot be reached leaves
    ``enqueued_at`` empty: the run stays in charge and the sweeper sends it again."""
    run = ProvisioningRun.objects.select_related("onboarding__tenant").get(pk=run_id)
    try:
        run_signature(run).apply_async()
    except StepFailedError:
        # Embedded (eager) mode runs the chain right here, and a failed step surfaces as its exception: it is
        # recorded already, and the run did reach its executor.
        pass
    except Exception as exc:  # the broker's client raises many kinds; none may lose the run
        logger.error("could not enqueue run %s: %s", run.id, type(exc).__name__)
        StepLog.objects.create(
            onboarding_id=run.onboarding_id,
            run_id=run.id,
            level=StepLog.Level.ERROR,
            message=f"could not reach the task broker ({type(exc).__name__}); the run will be sent again",
        )
        return False
    ProvisioningRun.objects.filter(pk=run.pk, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return True
