"""Step execution: one delivery of one step of a run, from its lease to its recorded end.

Every transition goes through the one writer (:func:`provisioning.state.onboarding_write`), with the attempt's row
and log lines in the same transaction. The engine is called outside any transaction or lock (except where a step
asks to be serialized per engine).
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass
from functools import cache

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from provisioning import rowsql
from provisioning.attempts import attempt_begin, attempt_close
from provisioning.capacity import (
    Tried,
    first_slot_sql,
    first_slot_wanted,
    requeue_countdown,
    step_hold,
    step_mark_waiting,
)
from provisioning.engines import engine_for
from provisioning.engines.errors import EngineError
from provisioning.locks import engine_lock, step_lease_key
from provisioning.models import Onboarding, ProvisioningRun, StepAttempt, StepLog, StepStatus
from provisioning.pending import add_update
from provisioning.state import DONE, Changed, Stale, now_iso, onboarding_write, run_end, step_log_row
from provisioning.steps import (
    STEP_BY_NAME,
    STEP_NAMES,
    StepContext,
    StepFailed,
    TenantSpec,
    admin_user_created_by_moran,
    execute,
)
from tenants.models import EngineConnection, Tenant

logger = logging.getLogger("moran.provisioning")


class StepOutcome(enum.StrEnum):
    """What a delivery of a step came to, and so what its task does next."""

    DONE = "done"  # recorded as completed (or found completed in this run): the chain goes on
    RETRY = "retry"  # a transient error, recorded: the task retries after ``countdown``
    SKIPPED = "skipped"  # an optional step failed, recorded: the chain goes on
    FAILED = "failed"  # a required step failed, recorded: the chain stops
    STALE = "stale"  # the run (or this attempt) is no longer in charge: nothing recorded, the chain stops
    DUPLICATE = "duplicate"  # another delivery of this step is running it: this copy is dropped
    WAIT = "wait"  # no slot of its engine was free: recorded as waiting, the task goes back to the queue


@dataclass(frozen=True)
class Outcome:
    kind: StepOutcome
    message: str = ""
    countdown: float = 0.0


@dataclass(frozen=True)
class Finish:
    """How an attempt that ended is recorded: the step's status, its log line and level, the attempt row's outcome,
    and whether it ends the run (``end_run``; for a completed step only when it is the last one)."""

    status: StepStatus
    attempt: str
    message: str
    level: str
    end_run: str | None = None


FINISHES = {
    StepOutcome.DONE: Finish(
        StepStatus.COMPLETED,
        StepAttempt.Outcome.COMPLETED,
        "completed: {summary}",
        StepLog.Level.INFO,
        ProvisioningRun.Outcome.COMPLETED,
    ),
    StepOutcome.RETRY: Finish(
        StepStatus.RETRYING,
        StepAttempt.Outcome.RETRYING,
        "transient error ({type}: {message}); retrying in {countdown:.1f} s",
        StepLog.Level.WARNING,
    ),
    StepOutcome.SKIPPED: Finish(
        StepStatus.SKIPPED,
        StepAttempt.Outcome.SKIPPED,
        "optional step skipped after an error ({type}: {message})",
        StepLog.Level.WARNING,
    ),
    StepOutcome.FAILED: Finish(
        StepStatus.FAILED,
        StepAttempt.Outcome.FAILED,
        "failed ({type}: {message})",
        StepLog.Level.ERROR,
        ProvisioningRun.Outcome.STOPPED,
    ),
}


@dataclass(frozen=True)
class StepError:
    error: dict  # {"type", "message", "engine_status"}, as the step state keeps it
    transient: bool = False
    retry_after: float | None = None


def step_error(exc: BaseException, *, step_name: str) -> StepError:
    """The one classifier: what an exception raised by a step means for the step."""
    if isinstance(exc, StepFailed):
        return StepError(exc.as_step_error())
    if isinstance(exc, EngineError):
        return StepError(exc.as_step_error(), exc.transient, exc.retry_after)
    if isinstance(exc, (OperationalError, InterfaceError)):  # our database went away mid-step: worth another go
        return StepError(_error(type(exc).__name__, "database connection lost"), transient=True)
    if isinstance(exc, SoftTimeLimitExceeded):
        limit = settings.STEP_SOFT_TIME_LIMIT
        return StepError(_error("TimeLimitExceeded", f"the step ran past its soft time limit ({limit} s)"), True)
    logger.error("step %s crashed", step_name, exc_info=exc)
    return StepError(_error(type(exc).__name__, str(exc)[:500] or type(exc).__name__))


def _error(kind: str, message: str) -> dict:
    return {"type": kind, "message": message, "engine_status": None}


def retry_countdown(retries: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter, capped; a server's Retry-After is honoured as a floor."""
    ceiling = min(settings.STEP_RETRY_BACKOFF_MAX, settings.STEP_RETRY_BACKOFF * (2**retries))
    delay = random.uniform(ceiling / 2, ceiling)
    if retry_after:
        delay = max(delay, float(retry_after))
    return delay


def step_execute(*, onboarding_id: int, run_id: str, step_name: str, retries: int, max_retries: int) -> Outcome:
    """Run one step for the run in charge. Records every transition through the one writer and returns what the task
    must do next.

    At most one delivery of a step of a run executes at a time: it holds the step's lease
    (:func:`provisioning.locks.step_lease`) from before it begins until it recorded its end. A second delivery of the same step (a message redelivered while its
    first delivery still runs, or a chain continued twice after a worker died between sending the next step and
    acknowledging) finds the lease taken and stops ("duplicate"): the holder's own message stays unacknowledged
    until it ends, so nothing is lost by dropping the copy.
    """
    found = _read(onboarding_id, lease=step_lease_key(run_id, step_name), slot=first_slot_wanted(step_name))
    if found is None:
        return Outcome(StepOutcome.STALE)  # the tenant was deleted: nothing is left to provision
    tenant, onboarding, tried = found
    # The attempt holds a slot of its engine from before it begins until its end is recorded; without one within a
    # short wait, the step waits in the queue instead (not an attempt).
    with step_hold(
        run_id=run_id,
        step_name=step_name,
        engine_id=tenant.engine_id,
        max_concurrency=tenant.engine.max_concurrency,
        tried=tried,
    ) as hold:
        if not hold.lease:
            message = "a second delivery of this step was dropped: another worker is running it"
            StepLog.objects.create(
                onboarding_id=onboarding_id,
                run_id=run_id,
                step=step_name,
                level=StepLog.Level.WARNING,
                message=message,
            )
            logger.warning(message, extra={"run_id": str(run_id), "step": step_name, "onboarding": onboarding_id})
            return Outcome(StepOutcome.DUPLICATE)
        if not hold.grant.held:
            try:
                step_mark_waiting(
                    onboarding_id=onboarding_id, run_id=run_id, step_name=step_name, reason=hold.grant.reason
                )
            except Stale:
                return Outcome(StepOutcome.STALE)
            return Outcome(StepOutcome.WAIT, hold.grant.reason, requeue_countdown())
        return _step_execute(
            onboarding_id=onboarding_id,
            run_id=run_id,
            step_name=step_name,
            retries=retries,
            max_retries=max_retries,
            tenant=tenant,
            read=onboarding,
            give_back=hold.give_back,
        )


def _step_intend(onboarding_id: int, run_id: str, step_name: str, doctype: str, name: str) -> None:
    """Record, committed before the engine is asked, that this step is about to create ``doctype`` ``name``: the
    attempt after a worker killed between the create and its result then knows the document is Moran's."""

    def change(ob, steps):
        entry = steps[step_name]
        steps[step_name] = {**entry, "intended": sorted({*(entry.get("intended") or ()), f"{doctype}:{name}"})}
        return steps

    onboarding_write(onboarding_id, run_id=run_id, change=change)


def _read(onboarding_id: int, *, lease: int | None = None, slot: bool = False):
    """The tenant, its engine connection and its onboarding (unlocked: the begin write compares its version), and
    what the same statement got of the step's advisory locks (:class:`~provisioning.capacity.Tried`: ``lease``, the
    step's lease key, and with ``slot`` a random slot of the engine; None on SQLite, which takes none). None when
    the onboarding is gone (no lock is taken then).

    The step's first statement, and its connection check. Django checks a reused connection with a round trip of
    its own before each task (``CONN_HEALTH_CHECKS``); a step skips it: a connection that died while idle
    (PostgreSQL restarted) fails this read, which opens a new one and reads again, once (the locks of the dead
    session went with it)."""
    connection.health_check_done = True
    try:
        return _read_once(onboarding_id, lease, slot)
    except (OperationalError, InterfaceError):
        if connection.in_atomic_block:
            raise
        connection.close()
        return _read_once(onboarding_id, lease, slot)


def _read_once(onboarding_id: int, lease: int | None, slot: bool):
    if connection.vendor != "postgresql":
        onboarding = Onboarding.objects.select_related("tenant__engine").filter(pk=onboarding_id).first()
        return (onboarding.tenant, onboarding, None) if onboarding else None
    locks = lease is not None
    row = rowsql.execute(_read_sql(locks), [lease, slot, onboarding_id] if locks else [onboarding_id])
    if row is None:
        return None
    at = 3 if locks else 0
    onboarding = rowsql.load(Onboarding, row, at)
    tenant = rowsql.load(Tenant, row, at + rowsql.width(Onboarding))
    tenant.engine = rowsql.load(EngineConnection, row, at + rowsql.width(Onboarding) + rowsql.width(Tenant))
    return tenant, onboarding, Tried(row[0], row[1] if row[2] else None) if locks else None


def _admin_created_by_moran(tenant: Tenant) -> bool:
    """:func:`provisioning.steps.admin_user_created_by_moran` for the step that reads it: on PostgreSQL one prepared
    statement (the ORM's query compiled on every call cost the step more than running it), the same conditions."""
    if connection.vendor != "postgresql" or tenant.engine_id is None:
        return admin_user_created_by_moran(tenant)
    return rowsql.execute(_admin_history_sql(), [tenant.engine_id, tenant.admin_email])[0]


@cache
def _admin_history_sql() -> str:
    onboardings, tenants = Onboarding._meta.db_table, Tenant._meta.db_table
    return (
        f"SELECT EXISTS (SELECT 1 FROM {tenants} t JOIN {onboardings} o ON o.tenant_id = t.id"
        " WHERE t.engine_id = %s AND UPPER(t.admin_email::text) = UPPER(%s)"
        " AND o.provisioning_steps -> 'step_7_admin_user' -> 'result' -> 'created_by_moran' = 'true'::jsonb)"
    )


@cache
def _read_sql(locks: bool) -> str:
    """The first read; with ``locks`` it also tries the lease (``%s``) and, when asked (``%s``), a random slot of the
    engine it reads: one round trip. Evaluated once, for the one row: no row, no lock."""
    onboardings, tenants, engines = (m._meta.db_table for m in (Onboarding, Tenant, EngineConnection))
    columns = ", ".join(rowsql.columns(m, a) for m, a in ((Onboarding, "o"), (Tenant, "t"), (EngineConnection, "e")))
    joins = f"FROM {onboardings} o JOIN {tenants} t ON t.id = o.tenant_id JOIN {engines} e ON e.id = t.engine_id"
    if not locks:
        return f"SELECT {columns} {joins} WHERE o.id = %s"
    return (
        "SELECT pg_try_advisory_lock(%s), k.slot, CASE WHEN %s THEN pg_try_advisory_lock(k.slot) ELSE false END,"
        f" {columns} {joins} CROSS JOIN LATERAL (SELECT {first_slot_sql('e')} AS slot) k WHERE o.id = %s"
    )


def _step_begin(ob, steps, *, step_name: str):
    """The writer's change that begins an attempt. Its result: the attempt's number, or None when the step already
    ended in this run."""
    entry = steps[step_name]
    if entry["status"] in DONE and entry.get("run_id") == str(ob.run_id):
        # Delivered again after it ended in this run (a worker died before acknowledging, or a chain continued
        # twice): nothing to do but let the chain go on.
        return Changed(steps, result=None)
    if entry["status"] == StepStatus.RUNNING and entry.get("run_id") == str(ob.run_id):
        # We hold the step's lease, so nobody runs the attempt that began: its worker was lost (killed, or its
        # database session ended). Say so, so that every attempt has an end.
        step_log_row(
            ob,
            step_name,
            entry["attempts"],
            f"attempt {entry['attempts']} interrupted: its worker was lost before it finished "
            "(the step's message was delivered again)",
            StepLog.Level.WARNING,
        )
        attempt_close(
            ob, entry, step=step_name, outcome=StepAttempt.Outcome.INTERRUPTED, ended_by=StepAttempt.EndedBy.REDELIVERY
        )
    attempt = entry["attempts"] + 1
    started_at = now_iso()
    # In the same transaction as the attempt count, so the count, the rows and the log lines always agree.
    step_log_row(ob, step_name, attempt, f"attempt {attempt} started")
    attempt_begin(ob, step=step_name, number=attempt, started_at=started_at)
    steps[step_name] = {
        **entry,
        "status": StepStatus.RUNNING.value,
        "attempts": attempt,
        "started_at": started_at,
        "finished_at": None,
        "run_id": str(ob.run_id),
    }
    return Changed(steps, result=attempt)


def _step_execute(
    *,
    onboarding_id: int,
    run_id: str,
    step_name: str,
    retries: int,
    max_retries: int,
    tenant: Tenant,
    read,
    give_back=None,
) -> Outcome:
    step = STEP_BY_NAME[step_name]
    try:
        onboarding, attempt = onboarding_write(
            onboarding_id,
            run_id=run_id,
            change=lambda ob, steps: _step_begin(ob, steps, step_name=step_name),
            read=read,
        )
    except Stale:
        return Outcome(StepOutcome.STALE)
    if attempt is None:
        return Outcome(StepOutcome.DONE, "already completed in this run")
    logger.info("attempt %s started", attempt, extra={"run_id": str(run_id), "step": step_name})

    skipped = frozenset(n for n, e in onboarding.provisioning_steps.items() if e.get("status") == StepStatus.SKIPPED)
    ctx = StepContext(
        engine=engine_for(tenant.engine, tenant=tenant, step=step_name),
        spec=TenantSpec.from_tenant(
            tenant, admin_created_by_moran=step.reads_admin_history and _admin_created_by_moran(tenant)
        ),
        skipped=skipped,
        intend=lambda doctype, name: _step_intend(onboarding_id, run_id, step_name, doctype, name),
        intended=frozenset(
            tuple(key.split(":", 1)) for key in onboarding.provisioning_steps[step_name].get("intended") or ()
        ),
    )
    try:
        if getattr(step, "serialize_per_engine", False):
            # The one step that holds a lock while it talks to the engine: it read-modify-writes a document shared by
            # every tenant of the engine (a fiscal year's company rows), and two tenants must not overwrite each other.
            with engine_lock(tenant.engine_id):
                result, done = execute(step, ctx)
        else:
            result, done = execute(step, ctx)
    except Stale:
        return Outcome(StepOutcome.STALE)  # superseded while it ran (it recorded an intent): the new run decides
    except Exception as exc:
        failure = step_error(exc, step_name=step_name)
    else:
        summary = "; ".join(done) if done else "nothing to create"
        return _finish(
            onboarding_id,
            run_id,
            step_name,
            attempt,
            StepOutcome.DONE,
            result=result,
            summary=summary,
            read=onboarding,
            give_back=give_back,
        )

    error = failure.error
    if failure.transient and retries < max_retries:
        countdown = retry_countdown(retries, failure.retry_after)
        return _finish(
            onboarding_id,
            run_id,
            step_name,
            attempt,
            StepOutcome.RETRY,
            error=error,
            countdown=countdown,
            read=onboarding,
            give_back=give_back,
        )
    if failure.transient:
        error = {**error, "message": f"gave up after {attempt} attempts: {error['message']}"}
    kind = StepOutcome.SKIPPED if step.optional else StepOutcome.FAILED
    return _finish(onboarding_id, run_id, step_name, attempt, kind, error=error, read=onboarding, give_back=give_back)


def _finish(
    onboarding_id,
    run_id,
    step_name,
    attempt,
    kind: StepOutcome,
    *,
    error=None,
    result=None,
    summary="",
    countdown=0.0,
    read=None,
    give_back=None,
) -> Outcome:
    """Record the end of attempt ``attempt`` as ``kind`` (one of :data:`FINISHES`). ``read``: the onboarding as the
    attempt's begin wrote it (the write compares its version, see :func:`onboarding_write`); ``give_back``: the
    step's hold, which a compare-and-swap write gives back in its own statement."""
    rule = FINISHES[kind]
    err = error or {}
    message = rule.message.format(
        summary=summary, type=err.get("type"), message=err.get("message"), countdown=countdown
    )
    end_run = rule.end_run
    if kind == StepOutcome.DONE and step_name != STEP_NAMES[-1]:
        end_run = None  # only the last step's completion ends the run

    def change(ob, steps):
        entry = steps[step_name]
        if entry["status"] != StepStatus.RUNNING or entry["attempts"] != attempt:
            # Fenced per attempt: a later attempt of this step began (this one was taken for lost), so this late
            # result is not recorded; the later attempt records its own.
            raise Stale(f"attempt {attempt} of {step_name} is no longer the step's current attempt")
        attempt_close(ob, entry, step=step_name, outcome=rule.attempt, error=error)
        steps[step_name] = {
            **entry,
            "status": rule.status.value,
            "error": error,
            "finished_at": now_iso(),
            **({"result": result} if result is not None else {}),
        }
        if end_run:
            run_end(ob, end_run)
            if end_run == ProvisioningRun.Outcome.COMPLETED:
                add_update(ob, Tenant, {"id": ob.tenant_id}, {"status": Tenant.Status.ACTIVE})
        return steps

    try:
        onboarding_write(
            onboarding_id,
            run_id=run_id,
            change=change,
            log=message,
            log_step=step_name,
            log_level=rule.level,
            log_attempt=attempt,
            read=read,
            give_back=give_back,
        )
    except Stale:
        return Outcome(StepOutcome.STALE)
    return Outcome(kind, summary if kind == StepOutcome.DONE else err.get("message", ""), countdown)
