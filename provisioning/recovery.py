"""The sweeper: finds the runs no worker will finish, and resolves them.

What it looks for, on every onboarding with a run in charge:

* **never enqueued** — the run was committed but its chain never reached the broker (``enqueued_at`` empty past
  ``SWEEP_ENQUEUE_GRACE``: the process died between the commit and the enqueue, or the broker refused it);
* **stuck** — a step ``running`` (its worker was lost and the message will not come back soon) or ``retrying`` (its
  retry message was lost) past its deadline, ``SWEEP_STEP_DEADLINE`` (the hard time limit plus the longest retry
  countdown plus a margin). A running step whose lease is still held by a live database session is left alone;
* **stalled** — no step in flight and no write for ``SWEEP_STALL_DEADLINE`` (the next step's message was lost, e.g.
  with a restarted broker that kept nothing).

How it resolves them: it **resumes** the onboarding as a new run from the first step that is not completed or
skipped (fencing discards any late message of the old run). A step found interrupted while running
``SWEEP_MAX_RESUMES`` times since an operator last started a run is a poison step: the sweeper then **marks** it
failed with an ``Interrupted`` error and ends the run, so the onboarding is PARTIAL or FAILED with the reason, and
continue works.

Every decision is taken inside :func:`provisioning.state.onboarding_write` — the one writer — fenced on the run it
diagnosed and diagnosed again on the locked row, so two sweepers at once (two beat instances by mistake) never both
act, and a run that moved on in the meantime is left alone. What it did is logged on the onboarding.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provisioning.models import Onboarding, ProvisioningRun, StepLog, StepStatus
from provisioning.services import _log_row, run_resume, step_lease_free
from provisioning.state import ACTIVE, DONE, Stale, normalised, now_iso, onboarding_write, run_end
from provisioning.steps import STEP_NAMES

logger = logging.getLogger("moran.provisioning")

#: ``requested_by`` of the runs the sweeper starts.
SWEEPER = "sweeper"
#: how the log line of an attempt the sweeper found interrupted ends (it counts them to find a poison step).
FOUND_BY_SWEEPER = "(found by the sweeper)"


@dataclass(frozen=True)
class Problem:
    kind: str  # "never_enqueued" | "stuck" | "stalled"
    step: str | None
    detail: str


@dataclass(frozen=True)
class SweepAction:
    tenant: str
    action: str  # "resumed" | "marked" | "left" | "ended"
    problem: str
    detail: str

    def __str__(self):
        return f"{self.tenant}: {self.action} ({self.problem}) {self.detail}"


class _Moved(Exception):
    """Under the lock, the problem is no longer there (a worker or another sweeper got there first)."""


def _since(entry: dict) -> dt.datetime | None:
    if entry["status"] == StepStatus.WAITING:  # like a retry: its next delivery is a message in the queue
        return parse_datetime(entry.get("waiting_since") or "") or None
    stamp = (
        entry["started_at"] if entry["status"] == StepStatus.RUNNING else entry["finished_at"] or entry["started_at"]
    )
    return parse_datetime(stamp) if stamp else None


def diagnose(onboarding: Onboarding, run: ProvisioningRun, *, now: dt.datetime) -> Problem | None:
    """What is wrong with the run in charge, or None. Reads only."""
    if run.outcome != ProvisioningRun.Outcome.ACTIVE or onboarding.run_id != run.id:
        return None
    steps = normalised(onboarding.provisioning_steps)
    # A step that began in this run proves the run reached an executor, whatever enqueued_at says (the embedded mode
    # sets it only after the whole chain ran in-process; a lost connection may have missed setting it).
    began = any(entry.get("run_id") == str(run.id) for entry in steps.values())
    if run.enqueued_at is None and not began:
        age = (now - run.created_at).total_seconds()
        if age >= settings.SWEEP_ENQUEUE_GRACE:
            return Problem(
                "never_enqueued", None, f"the run was committed {age:.0f} s ago and never reached the broker"
            )
        return None
    for name, entry in steps.items():
        if entry["status"] in ACTIVE:
            since = _since(entry)
            age = (now - since).total_seconds() if since else float("inf")
            if age < settings.SWEEP_STEP_DEADLINE:
                return None  # a step in flight, within its deadline
            verb = {StepStatus.RUNNING: "running", StepStatus.WAITING: "waiting for engine capacity"}.get(
                entry["status"], "waiting for a retry"
            )
            return Problem(
                "stuck",
                name,
                f"{name} has been {verb} for {age:.0f} s (attempt {entry['attempts']}; deadline "
                f"{settings.SWEEP_STEP_DEADLINE} s)",
            )
    idle = (now - max(onboarding.updated_at, run.enqueued_at or run.created_at)).total_seconds()
    if idle >= settings.SWEEP_STALL_DEADLINE:
        first = next((n for n in STEP_NAMES if steps[n]["status"] not in DONE), None)
        return Problem(
            "stalled", first, f"no step in flight and no progress for {idle:.0f} s (its next message was lost)"
        )
    return None


def _interrupted_in_a_row(onboarding_id, step: str) -> int:
    """How many attempts of this step the sweeper found interrupted since an operator last started a run."""
    since = (
        ProvisioningRun.objects.filter(onboarding_id=onboarding_id)
        .exclude(requested_by=SWEEPER)
        .order_by("-created_at")
        .values_list("created_at", flat=True)
        .first()
    )
    lines = StepLog.objects.filter(onboarding_id=onboarding_id, step=step, message__endswith=FOUND_BY_SWEEPER)
    return (lines.filter(created_at__gte=since) if since else lines).count()


def sweep(*, now: dt.datetime | None = None) -> list[SweepAction]:
    """One pass over every onboarding with a run in charge. Returns what it did (and what it left alone)."""
    actions = []
    for onboarding in Onboarding.objects.filter(run_id__isnull=False).select_related("tenant").order_by("id"):
        action = sweep_onboarding(onboarding, now=now)
        if action:
            actions.append(action)
    return actions


def sweep_onboarding(onboarding: Onboarding, *, now: dt.datetime | None = None) -> SweepAction | None:
    now = now or timezone.now()
    run = ProvisioningRun.objects.filter(pk=onboarding.run_id).first()
    if run is None:
        return None
    problem = diagnose(onboarding, run, now=now)
    if problem is None:
        return None
    slug = onboarding.tenant.slug
    stuck_entry = normalised(onboarding.provisioning_steps).get(problem.step or "", {})
    if problem.kind == "stuck" and stuck_entry.get("status") == StepStatus.RUNNING:
        # Outside the write: a session-level probe of the step's lease, held by whoever runs the step.
        if not step_lease_free(run.id, problem.step):
            return SweepAction(
                slug, "left", problem.kind, f"{problem.detail}; its lease is still held by a live session"
            )
    # Only a step that keeps dying while it runs (a poison step: it crashes or exhausts its worker every time) is
    # marked. A lost message (never enqueued, stalled, a retry that never came) is always resumed: doing so is safe,
    # and a false alarm under a long queue only costs a message that fencing discards.
    mark = (
        problem.kind == "stuck"
        and stuck_entry.get("status") == StepStatus.RUNNING
        and _interrupted_in_a_row(onboarding.pk, problem.step) >= settings.SWEEP_MAX_RESUMES
    )
    box: dict = {}

    def change(ob, steps):
        # The claim: the one writer locked the row and checked that the run is still in charge; the problem must
        # still be there on the locked row, or someone else (a worker, another sweeper) got there first.
        again = diagnose(ob, ProvisioningRun.objects.get(pk=run.pk), now=now)
        if again is None or (again.kind, again.step) != (problem.kind, problem.step):
            raise _Moved()
        entry = steps.get(problem.step) if problem.step else None
        if entry and entry["status"] == StepStatus.RUNNING:
            # The attempt that began never ended: say so, so that every attempt has an end in the log.
            _log_row(
                ob,
                problem.step,
                entry["attempts"],
                f"attempt {entry['attempts']} interrupted: its worker was lost {FOUND_BY_SWEEPER}",
                StepLog.Level.WARNING,
            )
        if entry is not None and entry["status"] not in DONE:
            steps[problem.step] = {
                **entry,
                "status": StepStatus.FAILED.value if mark else entry["status"],
                "finished_at": now_iso() if entry["status"] in ACTIVE else entry["finished_at"],
                "error": {
                    "type": "Interrupted",
                    "message": (
                        f"interrupted: {again.detail}"
                        + (
                            f"; the sweeper already resumed it {settings.SWEEP_MAX_RESUMES} times in a row: "
                            "look at the workers, then continue"
                            if mark
                            else ""
                        )
                    ),
                    "engine_status": None,
                },
            }
        if mark:
            run_end(ob, ProvisioningRun.Outcome.STOPPED)
            box["action"] = "marked"
        else:
            new_run = run_resume(ob, steps, requested_by=SWEEPER)
            box["action"] = "resumed" if new_run else "ended"
            box["run"] = new_run
        return steps

    messages = {
        "marked": "the sweeper stopped the run: {detail}; continue runs it again",
        "resumed": "the sweeper resumed the onboarding as a new run: {detail}",
    }

    def log_message():
        return messages.get(box.get("action"), "the sweeper ended the run: every step is done ({detail})")

    try:
        onboarding_write(
            onboarding.pk,
            run_id=run.id,
            change=change,
            log=lambda: log_message().format(detail=problem.detail),
            log_step=problem.step or "",
            log_level=StepLog.Level.WARNING,
        )
    except (Stale, _Moved):
        return None
    detail = problem.detail
    if box.get("run") is not None:
        detail += f"; new run {box['run'].id} from {STEP_NAMES[box['run'].start_index]}"
    logger.warning("sweeper %s %s: %s", box["action"], slug, detail)
    return SweepAction(slug, box["action"], problem.kind, detail)
