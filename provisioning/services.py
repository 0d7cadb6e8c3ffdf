"""Provisioning services: the one place where start, continue, retry, cancel and step execution are defined.

The CLI, the API, the admin and the Celery tasks all call these.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import random
import time
import zlib
from dataclasses import dataclass

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from moran.errors import NoActiveRun, NothingToContinue, RunActive
from provisioning.capacity import engine_slot, requeue_countdown, step_mark_waiting
from provisioning.engines import engine_for
from provisioning.engines.errors import EngineError
from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, RunKind, StepLog, StepStatus
from provisioning.state import (
    ACTIVE,
    ANY_RUN,
    DONE,
    Stale,
    derive,
    initial_steps,
    now_iso,
    onboarding_write,
    run_end,
)
from provisioning.steps import STEP_BY_NAME, STEP_NAMES, STEPS, StepContext, StepFailed, TenantSpec, execute
from tenants.models import Tenant

logger = logging.getLogger("moran.provisioning")


# --- runs -------------------------------------------------------------------------------------------------------
def onboarding_create(*, tenant: Tenant) -> Onboarding:
    steps = initial_steps()
    derived = derive(steps, run_active=False, previous_status=OnboardingStatus.PENDING)
    onboarding, _ = Onboarding.objects.get_or_create(
        tenant=tenant,
        defaults={"provisioning_steps": steps, "status": derived.status, "current_step": derived.current_step},
    )
    return onboarding


def _first_incomplete(steps: dict) -> int | None:
    return next((i for i, name in enumerate(STEP_NAMES) if steps[name]["status"] not in DONE), None)


def _run_begin(onboarding: Onboarding, *, kind: str, start_index: int, requested_by: str) -> ProvisioningRun:
    """Inside a locked write: claim the onboarding for a new run."""
    run = ProvisioningRun.objects.create(
        onboarding=onboarding, kind=kind, start_index=start_index, requested_by=requested_by[:150]
    )
    onboarding.run_id = run.id
    onboarding.started_at = timezone.now()
    onboarding.finished_at = None
    # A new run clears CANCELLED: derive() sees an active run.
    onboarding.status = OnboardingStatus.IN_PROGRESS
    transaction.on_commit(lambda: run_enqueue(run_id=run.id))
    return run


def _begin(onboarding: Onboarding, *, kind: str, requested_by: str, choose_start, reset) -> ProvisioningRun:
    runs: list[ProvisioningRun] = []

    def change(ob, steps):
        # Claim, don't check-then-act: decided under the row lock, so two clicks start one run.
        if ob.run_id is not None:
            raise RunActive(f"A run is already active for tenant '{ob.tenant.slug}' (run {ob.run_id})")
        start = choose_start(ob, steps)
        for i, name in enumerate(STEP_NAMES):
            if i >= start and reset(steps[name]):
                steps[name] = {
                    **steps[name],
                    "status": StepStatus.PENDING.value,
                    "error": None,
                    "started_at": None,
                    "finished_at": None,
                }
        runs.append(_run_begin(ob, kind=kind, start_index=start, requested_by=requested_by))
        return steps

    onboarding_write(
        onboarding.pk,
        run_id=ANY_RUN,
        change=change,
        log=f"{kind} requested{' by ' + requested_by if requested_by else ''}: a new run starts",
    )
    return runs[0]


def run_resume(ob: Onboarding, steps: dict, *, requested_by: str) -> ProvisioningRun | None:
    """Inside a locked write (the sweeper's): end the run in charge as superseded and begin a new one from the first
    step that is not completed or skipped, exactly as continue would; fencing then discards any late message of the
    old run. Returns None (and ends the run as completed) when every step is done already."""
    start = _first_incomplete(steps)
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
    """A new run from the first step that is not completed or skipped. Steps before it are not run again."""

    def choose(ob, steps):
        start = _first_incomplete(steps)
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


def onboarding_cancel(*, onboarding: Onboarding, requested_by: str = "") -> Onboarding:
    """Stop the active run: its remaining steps do not run (their tasks find the run no longer in charge). A step
    already talking to the engine finishes there, but its result is not recorded; continue runs it again."""

    def change(ob, steps):
        if ob.run_id is None:
            raise NoActiveRun(f"No run is active for tenant '{ob.tenant.slug}': nothing to cancel")
        for name, entry in steps.items():
            if entry["status"] == StepStatus.RUNNING:
                # Its worker's result will not be recorded (fenced): this is the attempt's end in the log.
                _log_row(ob, name, entry["attempts"], f"attempt {entry['attempts']} cancelled while running")
            if entry["status"] in ACTIVE:
                steps[name] = {
                    **entry,
                    "status": StepStatus.PENDING.value,
                    "finished_at": now_iso(),
                    "error": {"type": "Cancelled", "message": "cancelled while running", "engine_status": None},
                }
        run_end(ob, ProvisioningRun.Outcome.CANCELLED)
        ob.status = OnboardingStatus.CANCELLED
        return steps

    return onboarding_write(
        onboarding.pk,
        run_id=ANY_RUN,
        change=change,
        log=f"run cancelled{' by ' + requested_by if requested_by else ''}",
        log_level=StepLog.Level.WARNING,
    )


def run_signature(run: ProvisioningRun):
    """The canvas of a run: a chain of the step tasks from its start index, each carrying the onboarding id, the run
    id and (for Flower and logs) the tenant's slug."""
    from celery import chain

    from provisioning.tasks import STEP_TASKS

    slug = run.onboarding.tenant.slug
    queue = settings.PROVISIONING_QUEUE
    return chain(
        STEP_TASKS[name].si(run.onboarding_id, str(run.id), tenant=slug).set(queue=queue)
        for name in STEP_NAMES[run.start_index :]
    )


def run_enqueue(*, run_id) -> bool:
    """Send a committed run to the broker (called after commit). A broker that cannot be reached leaves
    ``enqueued_at`` empty: the run stays in charge and the sweeper sends it again."""
    from provisioning.tasks import StepFailedError

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


# --- step execution ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Outcome:
    kind: str  # "done" | "stale" | "duplicate" | "retry" | "wait" | "failed" | "skipped"
    message: str = ""
    countdown: float = 0.0


def retry_countdown(retries: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, capped; a server's Retry-After is honoured as a floor."""
    ceiling = min(settings.STEP_RETRY_BACKOFF_MAX, settings.STEP_RETRY_BACKOFF * (2**retries))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after:
        delay = max(delay, float(retry_after))
    return delay


def step_execute(*, onboarding_id: int, run_id: str, step_name: str, retries: int, max_retries: int) -> Outcome:
    """Run one step for the run in charge. Records every transition through the one writer and returns what the task
    must do next. The engine is called outside any transaction or lock (except where a step asks to be serialized
    per engine).

    At most one delivery of a step of a run executes at a time: it holds the step's lease (:func:`step_lease`) from
    before it begins until it recorded its end. A second delivery of the same step (a message redelivered while its
    first delivery still runs, or a chain continued twice after a worker died between sending the next step and
    acknowledging) finds the lease taken and stops ("duplicate"): the holder's own message stays unacknowledged
    until it ends, so nothing is lost by dropping the copy.
    """
    with step_lease(run_id, step_name) as held:
        if not held:
            _log(
                onboarding_id,
                run_id,
                step_name,
                0,
                "a second delivery of this step was dropped: another worker is running it",
                StepLog.Level.WARNING,
            )
            return Outcome("duplicate")
        # --- engine capacity (provisioning/capacity.py): the attempt holds a slot of its engine from before it
        # begins until its end is recorded; without one within a short wait, the step waits in the queue instead.
        with engine_slot(onboarding_id=onboarding_id, step_name=step_name) as slot:
            if not slot.held:
                try:
                    step_mark_waiting(
                        onboarding_id=onboarding_id, run_id=run_id, step_name=step_name, reason=slot.reason
                    )
                except Stale:
                    return Outcome("stale")
                return Outcome("wait", slot.reason, requeue_countdown())
            # --- end of engine capacity
            return _step_execute(
                onboarding_id=onboarding_id,
                run_id=run_id,
                step_name=step_name,
                retries=retries,
                max_retries=max_retries,
            )


def _step_execute(*, onboarding_id: int, run_id: str, step_name: str, retries: int, max_retries: int) -> Outcome:
    step = STEP_BY_NAME[step_name]
    is_last = step_name == STEP_NAMES[-1]
    attempt_box = {}

    def begin(ob, steps):
        entry = steps[step_name]
        if entry["status"] in DONE and entry.get("run_id") == str(ob.run_id):
            # Delivered again after it ended in this run (a worker died before acknowledging, or a chain continued
            # twice): nothing to do but let the chain go on.
            attempt_box["already"] = True
            return steps
        if entry["status"] == StepStatus.RUNNING and entry.get("run_id") == str(ob.run_id):
            # We hold the step's lease, so nobody runs the attempt that began: its worker was lost (killed, or its
            # database session ended). Say so, so that every attempt has an end in the log.
            _log_row(
                ob,
                step_name,
                entry["attempts"],
                f"attempt {entry['attempts']} interrupted: its worker was lost before it finished "
                "(the step's message was delivered again)",
                StepLog.Level.WARNING,
            )
        attempt = attempt_box["attempt"] = entry["attempts"] + 1
        # In the same transaction as the attempt count, so the count and the log lines always agree.
        _log_row(ob, step_name, attempt, f"attempt {attempt} started")
        steps[step_name] = {
            **entry,
            "status": StepStatus.RUNNING.value,
            "attempts": attempt,
            "started_at": now_iso(),
            "finished_at": None,
            "run_id": str(ob.run_id),
        }
        return steps

    try:
        onboarding = onboarding_write(onboarding_id, run_id=run_id, change=begin)
    except Stale:
        return Outcome("stale")
    if attempt_box.get("already"):
        return Outcome("done", "already completed in this run")
    attempt = attempt_box["attempt"]
    logger.info("attempt %s started", attempt, extra={"run_id": str(run_id), "step": step_name})

    tenant = Tenant.objects.select_related("engine").get(pk=onboarding.tenant_id)
    skipped = frozenset(n for n, e in onboarding.provisioning_steps.items() if e.get("status") == StepStatus.SKIPPED)
    ctx = StepContext(
        engine=engine_for(tenant.engine, tenant=tenant, step=step_name),
        spec=TenantSpec.from_tenant(tenant),
        skipped=skipped,
    )
    error: dict | None = None
    transient = False
    retry_after = None
    try:
        if getattr(step, "serialize_per_engine", False):
            # The one step that holds a lock while it talks to the engine: it read-modify-writes a document shared by
            # every tenant of the engine (a fiscal year's company rows), and two tenants must not overwrite each other.
            with engine_lock(tenant.engine_id):
                result, done = execute(step, ctx)
        else:
            result, done = execute(step, ctx)
    except StepFailed as exc:
        error = exc.as_step_error()
    except EngineError as exc:
        error, transient, retry_after = exc.as_step_error(), exc.transient, exc.retry_after
    except (OperationalError, InterfaceError) as exc:  # our database went away mid-step: worth another attempt
        error, transient = (
            {"type": type(exc).__name__, "message": "database connection lost", "engine_status": None},
            True,
        )
    except Exception as exc:
        from celery.exceptions import SoftTimeLimitExceeded

        if isinstance(exc, SoftTimeLimitExceeded):
            error, transient = (
                {
                    "type": "TimeLimitExceeded",
                    "message": f"the step ran past its soft time limit ({settings.STEP_SOFT_TIME_LIMIT} s)",
                    "engine_status": None,
                },
                True,
            )
        else:
            logger.exception("step %s crashed", step_name)
            error = {"type": type(exc).__name__, "message": str(exc)[:500] or type(exc).__name__, "engine_status": None}

    if error is None:
        return _step_completed(onboarding_id, run_id, step_name, attempt, result, done, is_last)
    if transient and retries < max_retries:
        countdown = retry_countdown(retries, retry_after)
        return _step_retrying(onboarding_id, run_id, step_name, attempt, error, countdown)
    if transient:
        error = {**error, "message": f"gave up after {attempt} attempts: {error['message']}"}
    if step.optional:
        return _step_skipped(onboarding_id, run_id, step_name, attempt, error)
    return _step_failed(onboarding_id, run_id, step_name, attempt, error)


def _log_row(onboarding, step, attempt, message, level=StepLog.Level.INFO):
    """A log line written inside the one writer's transaction (it commits or rolls back with the state)."""
    StepLog.objects.create(
        onboarding=onboarding, run_id=onboarding.run_id, step=step, attempt=attempt, level=level, message=message
    )


def _log(onboarding_id, run_id, step, attempt, message, level=StepLog.Level.INFO):
    StepLog.objects.create(
        onboarding_id=onboarding_id, run_id=run_id, step=step, attempt=attempt, level=level, message=message
    )
    logger.log(
        logging.WARNING if level != StepLog.Level.INFO else logging.INFO,
        message,
        extra={"run_id": str(run_id), "step": step, "onboarding": onboarding_id},
    )


def _finish(
    onboarding_id,
    run_id,
    step_name,
    attempt,
    *,
    status,
    error=None,
    result=None,
    message,
    level,
    end_run=None,
    outcome: Outcome,
):
    def change(ob, steps):
        entry = steps[step_name]
        if entry["status"] != StepStatus.RUNNING or entry["attempts"] != attempt:
            # Fenced per attempt: a later attempt of this step began (this one was taken for lost), so this late
            # result is not recorded; the later attempt records its own.
            raise Stale(f"attempt {attempt} of {step_name} is no longer the step's current attempt")
        steps[step_name] = {
            **entry,
            "status": status,
            "error": error,
            "finished_at": now_iso(),
            **({"result": result} if result is not None else {}),
        }
        if end_run:
            run_end(ob, end_run)
            if end_run == ProvisioningRun.Outcome.COMPLETED:
                Tenant.objects.filter(pk=ob.tenant_id).update(status=Tenant.Status.ACTIVE)
        return steps

    try:
        onboarding_write(
            onboarding_id,
            run_id=run_id,
            change=change,
            log=message,
            log_step=step_name,
            log_level=level,
            log_attempt=attempt,
        )
    except Stale:
        return Outcome("stale")
    return outcome


def _step_completed(onboarding_id, run_id, step_name, attempt, result, done, is_last):
    summary = "; ".join(done) if done else "nothing to create"
    return _finish(
        onboarding_id,
        run_id,
        step_name,
        attempt,
        status=StepStatus.COMPLETED.value,
        result=result,
        message=f"completed: {summary}",
        level=StepLog.Level.INFO,
        end_run=ProvisioningRun.Outcome.COMPLETED if is_last else None,
        outcome=Outcome("done", summary),
    )


def _step_retrying(onboarding_id, run_id, step_name, attempt, error, countdown):
    return _finish(
        onboarding_id,
        run_id,
        step_name,
        attempt,
        status=StepStatus.RETRYING.value,
        error=error,
        message=f"transient error ({error['type']}: {error['message']}); retrying in {countdown:.1f} s",
        level=StepLog.Level.WARNING,
        outcome=Outcome("retry", error["message"], countdown),
    )


def _step_skipped(onboarding_id, run_id, step_name, attempt, error):
    return _finish(
        onboarding_id,
        run_id,
        step_name,
        attempt,
        status=StepStatus.SKIPPED.value,
        error=error,
        message=f"optional step skipped after an error ({error['type']}: {error['message']})",
        level=StepLog.Level.WARNING,
        outcome=Outcome("skipped", error["message"]),
    )


def _step_failed(onboarding_id, run_id, step_name, attempt, error):
    return _finish(
        onboarding_id,
        run_id,
        step_name,
        attempt,
        status=StepStatus.FAILED.value,
        error=error,
        message=f"failed ({error['type']}: {error['message']})",
        level=StepLog.Level.ERROR,
        end_run=ProvisioningRun.Outcome.STOPPED,
        outcome=Outcome("failed", error["message"]),
    )


def plan_steps(*, tenant: Tenant) -> list[tuple[str, object]]:
    """The read-only plan: each step's look, or the error that stops it. Writes nothing anywhere."""
    ctx = StepContext(engine=engine_for(tenant.engine), spec=TenantSpec.from_tenant(tenant))
    out = []
    for step in STEPS[:-1]:
        try:
            out.append((step.name, step.look(ctx)))
        except (StepFailed, EngineError) as exc:
            out.append((step.name, exc))
    return out


def step_lease_key(run_id, step_name: str) -> int:
    """The advisory-lock key of one step of one run (a signed 64-bit integer, as PostgreSQL wants)."""
    digest = hashlib.blake2b(f"moran:step:{run_id}:{step_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def step_lease(run_id, step_name: str, *, wait: float | None = None):
    """Hold the lease of a step of a run while it executes: a PostgreSQL session advisory lock, which the server
    releases by itself when the holder's session ends — a killed worker (SIGKILL of the child or of the whole worker)
    frees it at once, no timeout to wait for. Yields False when another session holds it after ``wait`` seconds
    (a short wait covers the moment between a worker's death and the server noticing it). SQLite (the embedded mode)
    has a single process and needs no lease."""
    if connection.vendor != "postgresql":
        yield True
        return
    wait = settings.STEP_LEASE_WAIT if wait is None else wait
    key = step_lease_key(run_id, step_name)
    deadline = time.monotonic() + wait
    while True:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [key])
            held = cursor.fetchone()[0]
        if held or time.monotonic() >= deadline:
            break
        time.sleep(0.25)
    try:
        yield held
    finally:
        if held:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
            except (OperationalError, InterfaceError):
                pass  # the session is gone, and the lock with it


def step_lease_free(run_id, step_name: str) -> bool:
    """True when no session holds the lease of this step of this run (for the sweeper: a step past its deadline whose
    lease is still held is being run by a live session and is left alone). A read of ``pg_locks``, not a try-lock,
    so that two sweepers probing at once do not see each other's probe as a holder."""
    if connection.vendor != "postgresql":
        return True
    key = step_lease_key(run_id, step_name)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = ((%s::bigint >> 32) & 4294967295)::oid AND objid = (%s::bigint & 4294967295)::oid)",
            [key, key],
        )
        return cursor.fetchone()[0]


@contextlib.contextmanager
def engine_lock(engine_id):
    """A lock per engine connection that is not a transaction (so nothing a step writes is rolled back with it):
    a PostgreSQL session advisory lock. SQLite (the embedded mode) serializes its writers anyway."""
    if connection.vendor != "postgresql":
        yield
        return
    key = zlib.crc32(f"moran:engine:{engine_id}".encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
