"""The one writer of onboarding state, and the rules that derive status from step states.

Every change to ``Onboarding.provisioning_steps`` goes through :func:`onboarding_write`: it locks the row
(``SELECT ... FOR UPDATE``; on SQLite the IMMEDIATE transaction takes the database write lock), refuses a write from a
run that is no longer in charge, hands the caller a *copy* of the step states, assigns the result back, derives
status / current_step / steps_completed / progress, and saves. What the change decided comes back to its caller with
the saved onboarding (:class:`Written`), never through a variable the change closes over. The seeds' bug (a JSON dict mutated in place and never
saved) and lost updates between two writers cannot happen through it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from django.db import InterfaceError, OperationalError, connection, transaction
from django.utils import timezone

from provisioning.batch_hooks import batch_run_ended
from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, StepLog, StepStatus
from provisioning.pending import GiveBack, add_row, add_update, pending_begin, pending_write, pending_write_if
from provisioning.rowsql import select_for_update
from provisioning.steps import STEP_BY_NAME, STEPS, TOTAL_STEPS
from provisioning.webhooks.outbox import onboarding_run_ended

logger = logging.getLogger("moran.provisioning")

DONE = {StepStatus.COMPLETED, StepStatus.SKIPPED}
ACTIVE = {StepStatus.RUNNING, StepStatus.RETRYING, StepStatus.WAITING}

#: pass as ``run_id`` to write whatever run is in charge (operator actions).
ANY_RUN = object()


def now_iso() -> str:
    return timezone.now().isoformat().replace("+00:00", "Z")


def empty_step() -> dict:
    return {
        "status": StepStatus.PENDING.value,
        "attempts": 0,
        "started_at": None,
        "finished_at": None,
        "error": None,
        "result": None,
        "run_id": None,
    }


def initial_steps() -> dict:
    return {step.name: empty_step() for step in STEPS}


def normalised(steps: dict) -> dict:
    """Every step present, in order, with every key (older rows or hand-edited JSON lose nothing)."""
    return {step.name: {**empty_step(), **(steps.get(step.name) or {})} for step in STEPS}


@dataclass(frozen=True)
class Derived:
    status: str
    current_step: str | None
    steps_completed: int
    progress: int


def derive(steps: dict, *, run_active: bool, previous_status: str) -> Derived:
    """The brief's rules. ``previous_status`` only matters for CANCELLED, which holds until a new run starts."""
    steps = normalised(steps)
    statuses = {name: entry["status"] for name, entry in steps.items()}
    completed = sum(1 for s in statuses.values() if s == StepStatus.COMPLETED)
    done = sum(1 for s in statuses.values() if s in DONE)
    current = next((n for n, s in statuses.items() if s in ACTIVE), None) or next(
        (n for n, s in statuses.items() if s not in DONE), None
    )
    if run_active:
        status = OnboardingStatus.IN_PROGRESS
    elif previous_status == OnboardingStatus.CANCELLED:
        status = OnboardingStatus.CANCELLED
    elif all(
        s == StepStatus.COMPLETED or (s == StepStatus.SKIPPED and STEP_BY_NAME[n].optional) for n, s in statuses.items()
    ):
        status = OnboardingStatus.COMPLETED
    elif completed:
        status = OnboardingStatus.PARTIAL
    elif all(s == StepStatus.PENDING for s in statuses.values()):
        status = OnboardingStatus.PENDING
    else:
        status = OnboardingStatus.FAILED
    return Derived(status.value, current, completed, round(100 * done / TOTAL_STEPS))


class Stale(Exception):
    """The write came from a run that is no longer in charge."""


@dataclass(frozen=True)
class Changed:
    """What a change returns when it decided more than the new step states: ``result`` goes back to the writer's
    caller, ``log`` (a message that depends on the decision) is written with the state."""

    steps: dict
    result: Any = None
    log: str | None = None


class Written(NamedTuple):
    onboarding: Onboarding
    result: Any


#: how many times a write reconnects after losing its database connection (about 15 s in all).
WRITE_RECONNECTS = 6


def onboarding_write(
    onboarding_id: int,
    *,
    run_id,
    change: Callable[[Onboarding, dict], dict | Changed],
    log: str | None = None,
    log_step: str = "",
    log_level: str = StepLog.Level.INFO,
    log_attempt: int = 0,
    read: Onboarding | None = None,
    give_back: GiveBack | None = None,
) -> Written:
    """Lock, fence, change, derive, save, log: atomically. ``change(onboarding, steps)`` gets a deep copy of the
    normalised step states, may also set run fields on the onboarding (and write rows that must commit with the
    state), and returns the new step states or a :class:`Changed`. Returns the saved onboarding and the change's
    result.

    Raises :class:`Stale` (and writes nothing) when ``run_id`` is not the run in charge.

    A database connection lost before the commit (PostgreSQL restarted, the backend terminated) is not a lost
    update: outside any outer transaction the write reconnects and is applied again, a few times over a few seconds,
    before the error propagates. ``change`` must therefore be a function of the locked row only (they all are).

    ``read``: the row as its caller read it just before, without a lock (the step executor reads it with the
    tenant, in the statement it needs anyway). The write is then first tried without a transaction, as one
    compare-and-swap statement: the change runs on ``read`` and the result is saved only if the row's ``version`` is
    still the one read — nobody wrote in between, so it is what the locked write would have done. It falls back to
    the locked write (which runs the change again, on the locked row) when the row changed, when the change sends SQL
    of its own, or when the write ends the run (its announcements are written under the lock).

    ``give_back``: advisory locks the compare-and-swap statement releases with the write (see
    :func:`provisioning.pending.pending_write_if`); the locked write leaves them to their holder.
    """
    write = {
        "run_id": run_id,
        "change": change,
        "log": log,
        "log_step": log_step,
        "log_level": log_level,
        "log_attempt": log_attempt,
    }
    if read is not None and connection.vendor == "postgresql" and not connection.in_atomic_block:
        try:
            written = _conditional_write(read, **write, give_back=give_back)
        except (OperationalError, InterfaceError):
            connection.close()  # the locked write below reconnects and applies it (a change is idempotent on a row)
            written = None
        if written is not None:
            return written
    attempt = 0
    while True:
        try:
            return _onboarding_write(onboarding_id, **write)
        except (OperationalError, InterfaceError):
            if connection.in_atomic_block or attempt == WRITE_RECONNECTS:
                raise  # an outer transaction is lost with the connection: only its owner may start it again
            logger.warning("database connection lost while writing onboarding %s; reconnecting", onboarding_id)
            connection.close()
            time.sleep(min(0.25 * 2**attempt, 4.0))
            attempt += 1


def _onboarding_write(onboarding_id, *, run_id, change, log, log_step, log_level, log_attempt) -> Written:
    with transaction.atomic():
        onboarding = select_for_update(Onboarding, onboarding_id)
        if run_id is not ANY_RUN and onboarding.run_id != (uuid.UUID(str(run_id)) if run_id else None):
            raise Stale(f"run {run_id} is not in charge of onboarding {onboarding_id} (run {onboarding.run_id} is)")
        run_before = onboarding.run_id
        pending_begin(onboarding)  # the log lines and attempt rows the change writes go with the state's UPDATE
        changed = change(onboarding, state_copy(onboarding.provisioning_steps))
        if not isinstance(changed, Changed):
            changed = Changed(changed)
        _apply_state(onboarding, changed.steps)
        log = changed.log or log
        # The run this write belongs to: the one it starts, the one in charge, or the one it ended.
        log_run = onboarding.run_id or run_before
        if log:
            add_row(onboarding, _log_line(onboarding, run_id, log, log_step, log_level, log_attempt))
        pending_write(onboarding)
        if run_before is not None and onboarding.run_id is None:
            # This write ended the run in charge (a run ends once: under this lock). Announce its end state; the
            # announcement commits (or rolls back) with the state.
            onboarding_run_ended(onboarding=onboarding, run_id=run_before, status=onboarding.status)
            batch_run_ended(onboarding=onboarding)
    _log_written(onboarding, log, log_level, log_step, log_run)
    return Written(onboarding, changed.result)


class _NeedsLock(BaseException):
    """A change tried without the lock sent SQL of its own: it runs again under the lock. A BaseException, so that
    no handler inside the change takes it for an error of its own."""


def _no_sql(execute, sql, params, many, context):
    raise _NeedsLock()


def _conditional_write(
    read, *, run_id, change, log, log_step, log_level, log_attempt, give_back=None
) -> Written | None:
    """The compare-and-swap form of :func:`_onboarding_write` (see ``read`` in :func:`onboarding_write`). Returns
    None when the locked write must do it."""
    if run_id is not ANY_RUN and read.run_id != (uuid.UUID(str(run_id)) if run_id else None):
        raise Stale(f"run {run_id} is not in charge of onboarding {read.pk} (run {read.run_id} is)")
    expected, run_before, stored = read.version, read.run_id, read.provisioning_steps
    pending_begin(read)
    try:
        with connection.execute_wrapper(_no_sql):
            changed = change(read, state_copy(stored))
    except _NeedsLock:
        return None
    if not isinstance(changed, Changed):
        changed = Changed(changed)
    _apply_state(read, changed.steps)
    if run_before is not None and read.run_id is None:
        return None
    log = changed.log or log
    if log:
        add_row(read, _log_line(read, run_id, log, log_step, log_level, log_attempt))
    merge = _changed_entries(stored, changed.steps)
    if not pending_write_if(read, version_field="version", expected=expected, give_back=give_back, merge=merge):
        return None
    _log_written(read, log, log_level, log_step, read.run_id)
    return Written(read, changed.result)


def _changed_entries(stored: dict, steps: dict) -> tuple[str, dict] | None:
    """The step entries a compare-and-swap write sends: only those it changed, merged into the stored document —
    about a tenth of it, which the server parses and the client encodes. Only when the stored document (as of the
    version compared) is normalised already, every step with every key and nothing else, and the new one has the same
    steps: merging then stores exactly what writing the whole document would. Otherwise the whole document (None)."""
    if steps.keys() != stored.keys() or stored != normalised(stored):
        return None
    return "provisioning_steps", {name: entry for name, entry in steps.items() if stored[name] != entry}


def _log_line(onboarding, run_id, log, log_step, log_level, log_attempt) -> StepLog:
    return StepLog(
        onboarding=onboarding,
        run_id=onboarding.run_id or (run_id if run_id is not ANY_RUN else None),
        step=log_step,
        attempt=log_attempt,
        level=log_level,
        message=log,
    )


def _log_written(onboarding, log, log_level, log_step, log_run) -> None:
    if log:
        logger.log(
            {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}[log_level],
            log,
            extra={"tenant": onboarding.tenant_id, "run_id": str(log_run or ""), "step": log_step},
        )


def state_copy(steps: dict) -> dict:
    """The normalised step states as new objects all the way down, for a change to edit: a JSON document's copy
    (dicts, lists and scalars only), several times cheaper than ``copy.deepcopy`` on the hot path."""
    return _json_copy(normalised(steps))


def _json_copy(value):
    if isinstance(value, dict):
        return {key: _json_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_copy(item) for item in value]
    return value


def _apply_state(onboarding: Onboarding, steps: dict) -> None:
    onboarding.provisioning_steps = steps  # a new object, assigned: never a dict mutated in place
    derived = derive(steps, run_active=onboarding.run_id is not None, previous_status=onboarding.status)
    onboarding.status = derived.status
    onboarding.current_step = derived.current_step
    onboarding.steps_completed = derived.steps_completed
    onboarding.progress = derived.progress
    onboarding.version += 1


def step_log_row(onboarding: Onboarding, step: str, attempt: int, message: str, level=StepLog.Level.INFO) -> None:
    """Inside :func:`onboarding_write`'s change: a log line that commits or rolls back with the state."""
    add_row(
        onboarding,
        StepLog(
            onboarding=onboarding, run_id=onboarding.run_id, step=step, attempt=attempt, level=level, message=message
        ),
    )


def run_end(onboarding: Onboarding, outcome: str) -> None:
    """Inside :func:`onboarding_write`'s change: the run in charge ends with this outcome."""
    if onboarding.run_id:
        # With the state's own statement (the writer collects it), as the rows a change writes are.
        add_update(
            onboarding, ProvisioningRun, {"id": onboarding.run_id}, {"outcome": outcome, "finished_at": timezone.now()}
        )
    onboarding.run_id = None
    onboarding.finished_at = timezone.now()
