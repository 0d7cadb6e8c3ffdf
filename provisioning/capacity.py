"""Engine capacity: how many steps may talk to one engine at once, across every worker on every machine.

An engine connection has ``max_concurrency`` slots. A step takes one before it begins and gives it back once its end
is recorded, so its ``started_at`` / ``finished_at`` are the moments it held a slot. A slot is a PostgreSQL session
advisory lock on one of K keys of the engine: no process memory, and the server frees it by itself when the holder's
session ends (a killed worker frees its slot at once, like a step's lease).

Company creation runs at most one at a time per engine (ERPNext validates the shared "Cash" Mode of Payment's rows
under REPEATABLE READ, so two companies created at once make one of them fail): ``step_1_company`` also takes the
engine's company-creation lock before its attempt begins, and the engine gives it back as soon as its Company create
call returns (:func:`company_creation_done`), so the step's look-again does not hold up the next tenant's create.
Taking the lock only at the create call would make a step that finds it taken either sleep in its worker while it
holds a slot, or give up an attempt that already began.

A step that cannot get what it needs within ``CAPACITY_WAIT`` seconds does not wait in its worker: the step is marked
``waiting`` ("waiting for engine capacity") and its task goes back to the queue with a countdown that does not count
as an attempt nor as a retry (see :mod:`provisioning.tasks`).

SQLite (the embedded mode) has one process, which serializes everything already: no slots.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from dataclasses import dataclass, field

from django.conf import settings
from django.db import connection
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provisioning.engines.company_lock import company_creation_done, company_held
from provisioning.locks import advisory_unlock, lease_wait, step_lease_key, try_advisory_locks
from provisioning.models import Onboarding, StepLog, StepStatus
from provisioning.pending import GiveBack
from provisioning.state import DONE, Changed, onboarding_write

#: the step that creates a company, and so must hold the engine's company-creation lock.
COMPANY_STEP = "step_1_company"
#: how often a bounded wait tries the locks again.
POLL = 0.05


def _key(*parts) -> int:
    """An advisory-lock key (a signed 64-bit integer, as PostgreSQL wants)."""
    digest = hashlib.blake2b(":".join(["moran", *map(str, parts)]).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


#: slots per engine that keys are laid out for (``max_concurrency`` is validated to at most this)
MAX_SLOTS = 64
#: the first engine slot key: the slots of engine ``e`` are ``SLOT_BASE + e * MAX_SLOTS + i``, a layout the step's
#: first read computes in SQL too (it tries a slot in the statement that reads the engine); the low 40 bits are clear,
#: so no engine id below 2**34 overflows the key.
SLOT_BASE = _key("engine-slots") & ~((1 << 40) - 1)


def slot_keys(engine_id: int, max_concurrency: int) -> list[int]:
    return [SLOT_BASE + engine_id * MAX_SLOTS + i for i in range(max(1, min(max_concurrency, MAX_SLOTS)))]


def first_slot_sql(engine: str) -> str:
    """SQL for a random slot key of the engine row ``engine`` (as :func:`slot_keys` lays them out)."""
    count = f"LEAST(GREATEST({engine}.max_concurrency, 1), {MAX_SLOTS})"
    return f"({SLOT_BASE}::bigint + {engine}.id * {MAX_SLOTS} + floor(random() * {count})::bigint)"


def first_slot_wanted(step_name: str) -> bool:
    """Whether a step's first statement tries a slot with its lease (step 1 takes the company lock before any slot)."""
    return _enabled() and step_name != COMPANY_STEP


def company_key(engine_id: int) -> int:
    return _key("engine-company", engine_id)


def _enabled() -> bool:
    return connection.vendor == "postgresql" and settings.CAPACITY_ENABLED


def _try_lock(key: int) -> bool:
    return try_advisory_locks(key)[0]


_unlock = advisory_unlock
_company_held = company_held


@dataclass(frozen=True)
class Grant:
    """What a step holds (or, when ``held`` is False, why it must wait)."""

    held: bool
    reason: str = ""
    slot: int | None = None


def _poll(attempt, deadline: float):
    """``attempt()`` until it returns something (not None) or the deadline passes."""
    while True:
        got = attempt()
        if got is not None or time.monotonic() >= deadline:
            return got
        time.sleep(POLL)


def _acquire(keys: list[int], company: int | None, wait: float) -> Grant:
    """Take the company lock when asked (first, and holding no slot while waiting for it: a tenant waiting for its
    turn to create a company must not keep other tenants' steps from the engine), then one of ``keys`` (in a random
    order, so that waiters spread over the slots)."""
    if company is not None:
        if _poll(lambda: _try_lock(company) or None, time.monotonic() + wait) is None:
            return Grant(False, "waiting for the engine's company creation (one company at a time per engine)")
        _company_held().add(company)
    slot = _poll(
        lambda: next((k for k in random.sample(keys, len(keys)) if _try_lock(k)), None), time.monotonic() + wait
    )
    if slot is None:
        company_creation_done()
        return Grant(False, f"waiting for engine capacity ({len(keys)} of {len(keys)} slots in use)")
    return Grant(True, slot=slot)


@contextlib.contextmanager
def engine_slot(*, onboarding_id: int, step_name: str, wait: float | None = None):
    """Hold a slot of the onboarding's engine (and, for step 1, its company-creation lock) while the step executes.
    Yields a :class:`Grant`; one that is not held means: give the worker back and come again later."""
    if not _enabled():
        yield Grant(True)
        return
    engine_id, max_concurrency = Onboarding.objects.filter(pk=onboarding_id).values_list(
        "tenant__engine_id", "tenant__engine__max_concurrency"
    )[0]
    wait = settings.CAPACITY_WAIT if wait is None else wait
    grant = _acquire(
        slot_keys(engine_id, max_concurrency), company_key(engine_id) if step_name == COMPANY_STEP else None, wait
    )
    try:
        yield grant
    finally:
        company_creation_done()
        if grant.slot is not None:
            _unlock(grant.slot)


@dataclass(frozen=True)
class Tried:
    """What the step's first statement got when it tried the lease and a first slot (the slot's key, or None)."""

    lease: bool
    slot: int | None = None


@dataclass
class Hold:
    """What :func:`step_hold` got: the step's lease (False: another delivery runs the step) and a slot.
    ``give_back``: the keys the hold ends with, for a write that gives them back in its own statement."""

    lease: bool
    grant: Grant
    give_back: GiveBack = field(default_factory=lambda: GiveBack([]))


@contextlib.contextmanager
def step_hold(*, run_id, step_name: str, engine_id: int, max_concurrency: int, tried: Tried | None):
    """The step's lease (:func:`provisioning.locks.step_lease`), then a slot of its engine (:func:`engine_slot`), as
    a step's execution holds them. The lease and a first slot were tried by the step's first read (``tried``; None
    on SQLite); they are given back in one statement: by the write that records the step's end
    (``hold.give_back``), else on the way out. That is what a step costs when its engine has room."""
    if connection.vendor != "postgresql":
        yield Hold(True, Grant(True))
        return
    lease = step_lease_key(run_id, step_name)
    keys = slot_keys(engine_id, max_concurrency) if _enabled() else []
    slot = tried.slot
    if not tried.lease and not lease_wait(lease, settings.STEP_LEASE_WAIT, tried=True):
        advisory_unlock(*([slot] if slot is not None else []))
        yield Hold(False, Grant(False))
        return
    grant = None
    hold = None
    try:
        if slot is not None or not keys:
            grant = Grant(True, slot=slot)
        else:
            grant = _acquire(
                keys, company_key(engine_id) if step_name == COMPANY_STEP else None, settings.CAPACITY_WAIT
            )
        held = [*([grant.slot] if grant.slot is not None else []), lease]
        hold = Hold(True, grant, GiveBack(held))
        yield hold
    finally:
        company_creation_done()
        if hold is None or not hold.give_back.done:
            advisory_unlock(*([grant.slot] if grant is not None and grant.slot is not None else []), lease)


def requeue_countdown() -> float:
    """When a step that found no slot comes back: soon, jittered so that waiters do not come back together."""
    return random.uniform(0.5, 1.0) * settings.CAPACITY_REQUEUE


def step_mark_waiting(*, onboarding_id: int, run_id, step_name: str, reason: str) -> None:
    """Record that the step waits for engine capacity (fenced on the run; raises ``Stale`` when it is not in charge).

    Written when the step starts waiting, and again now and then while it waits, so that the sweeper sees a step
    that is still being delivered; not on every bounce."""
    # Often enough that the sweeper, which takes a queued step for lost once it stood still past the longest retry
    # countdown, never mistakes a step that keeps bouncing off a full engine for one whose message was lost.
    refresh = max(
        5.0,
        min(settings.SWEEP_STEP_DEADLINE / 4, (settings.STEP_RETRY_BACKOFF_MAX + settings.SWEEP_LIVENESS_GRACE) / 2),
    )
    now = timezone.now()

    def change(ob, steps):
        entry = steps[step_name]
        if entry["status"] in DONE and entry.get("run_id") == str(ob.run_id):
            return steps  # done in this run already: the next delivery will say so
        if entry["status"] == StepStatus.RUNNING and entry.get("run_id") == str(ob.run_id):
            return steps  # an attempt that began and was lost: the next delivery that runs says so
        since = parse_datetime(entry.get("waiting_since") or "") if entry["status"] == StepStatus.WAITING else None
        if since is not None and entry.get("run_id") == str(ob.run_id) and (now - since).total_seconds() < refresh:
            return steps
        first = since is None
        steps[step_name] = {
            **entry,
            "status": StepStatus.WAITING.value,
            "started_at": None,
            "finished_at": None,
            "waiting_since": now.isoformat().replace("+00:00", "Z"),
            "run_id": str(ob.run_id),
        }
        # One log line when the step starts waiting, none when it only refreshes its stamp.
        return Changed(steps, log=reason if first else None)

    onboarding_write(
        onboarding_id,
        run_id=run_id,
        change=change,
        log_step=step_name,
        log_level=StepLog.Level.INFO,
    )


def engine_slots_in_use(engines) -> dict[int, int]:
    """How many slots of each engine are held right now (for the engine pages): one read of ``pg_locks``."""
    engines = list(engines)
    if not engines or not _enabled():
        return {}
    owner = {key: engine.pk for engine in engines for key in slot_keys(engine.pk, engine.max_concurrency)}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT (classid::bigint << 32) | objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND objsubid = 1 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        )
        held = [row[0] for row in cursor.fetchall()]
    counts = {engine.pk: 0 for engine in engines}
    for raw in held:
        key = raw - (1 << 64) if raw >= (1 << 63) else raw  # back to the signed key that was locked
        if key in owner:
            counts[owner[key]] += 1
    return counts
