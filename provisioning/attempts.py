"""The attempt rows: begun and closed inside :func:`provisioning.state.onboarding_write`'s change, so that they
commit (or roll back) with the step state they describe, in the state's own statement (:mod:`provisioning.pending`)."""

from __future__ import annotations

import os
import socket

from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provisioning.models import Onboarding, StepAttempt
from provisioning.pending import add_row, add_update


def worker_name() -> str:
    """hostname:pid of this process (read on each call: a pool child's pid is not its parent's)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def attempt_begin(onboarding: Onboarding, *, step: str, number: int, started_at: str) -> None:
    """Inside the writer's change, after ``onboarding.run_id`` is the run the attempt belongs to."""
    add_row(
        onboarding,
        StepAttempt(
            onboarding=onboarding,
            run_id=onboarding.run_id,
            step=step,
            number=number,
            started_at=parse_datetime(started_at),
            worker=worker_name()[:255],
        ),
    )


def attempt_close(
    onboarding: Onboarding,
    entry: dict,
    *,
    step: str,
    outcome: str,
    ended_by: str = StepAttempt.EndedBy.WORKER,
    error: dict | None = None,
) -> None:
    """Inside the writer's change: end the open attempt that the step state ``entry`` (as read under the lock)
    counts. One UPDATE (of no row when that attempt was closed already), timed from the entry's ``started_at``."""
    now = timezone.now()
    started = parse_datetime(entry["started_at"]) if entry.get("started_at") else None
    add_update(
        onboarding,
        StepAttempt,
        {"onboarding": onboarding, "step": step, "number": entry["attempts"], "outcome": StepAttempt.Outcome.RUNNING},
        {
            "outcome": outcome,
            "ended_by": ended_by,
            "error": error,
            "finished_at": now,
            "duration_ms": max(0, int((now - started).total_seconds() * 1000)) if started else None,
        },
    )
