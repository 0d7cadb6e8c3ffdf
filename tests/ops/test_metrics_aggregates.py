"""The aggregates behind /metrics agree with a plain reading of the rows, on PostgreSQL (in SQL) and SQLite."""

import datetime as dt
import uuid

import pytest
from django.utils import timezone

from moran.metrics import DURATION_BUCKETS, step_duration_rows, step_state_counts
from provisioning.models import Onboarding, StepAttempt, StepLog
from provisioning.state import normalised
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


def set_steps(tenant, steps):
    # Straight to the row: these shapes (missing entries, odd JSON) are what the writer never makes but a hand edit
    # or an older row might hold.
    Onboarding.objects.filter(pk=tenant.onboarding.pk).update(provisioning_steps=steps)


def test_step_state_counts_read_every_shape_as_normalised_does():
    # given
    set_steps(make_tenant(), {name: {"status": "completed"} for name in STEP_NAMES})
    set_steps(make_tenant(), {STEP_NAMES[0]: {"status": "failed", "attempts": 2}, STEP_NAMES[1]: {"attempts": 1}})
    set_steps(make_tenant(), {STEP_NAMES[2]: None, "not_a_step": {"status": "completed"}})
    set_steps(make_tenant(), {})
    # when
    counts = step_state_counts()
    # then
    expected = {}
    for steps in Onboarding.objects.values_list("provisioning_steps", flat=True):
        for name, entry in normalised(steps).items():
            expected[(name, entry["status"])] = expected.get((name, entry["status"]), 0) + 1
    assert counts == expected
    assert counts[(STEP_NAMES[0], "failed")] == 1
    assert counts[(STEP_NAMES[1], "pending")] == 3


def log_attempt(onboarding, run_id, step, attempt, seconds, *, finished=True):
    began = timezone.now() - dt.timedelta(hours=1)
    StepAttempt.objects.create(
        onboarding=onboarding,
        run_id=run_id,
        step=step,
        number=attempt,
        started_at=began,
        finished_at=began + dt.timedelta(seconds=seconds) if finished else None,
        outcome=StepAttempt.Outcome.COMPLETED if finished else StepAttempt.Outcome.RUNNING,
        duration_ms=round(seconds * 1000) if finished else None,
    )


def test_step_durations_are_bucketed_per_finished_attempt():
    # given two finished attempts of one step (0.2 s and 3 s), one still running, and a log line (not an attempt)
    onboarding, run_id = make_tenant().onboarding, uuid.uuid4()
    step = STEP_NAMES[1]
    log_attempt(onboarding, run_id, step, 1, 0.2)
    log_attempt(onboarding, run_id, step, 2, 3.0)
    log_attempt(onboarding, run_id, step, 3, 0, finished=False)
    StepLog.objects.create(onboarding=onboarding, run_id=run_id, step="", attempt=0, message="run requested")
    # when
    rows = {row[0]: row for row in step_duration_rows()}
    # then
    _, count, total, *cumulative = rows[step]
    assert count == 2
    assert total == pytest.approx(3.2, abs=0.01)
    assert dict(zip(DURATION_BUCKETS, cumulative, strict=True))[0.25] == 1
    assert dict(zip(DURATION_BUCKETS, cumulative, strict=True))[5.0] == 2
    assert set(rows) == {step}


def test_step_durations_on_the_bucket_bounds_count_in_that_bucket():
    # given finished attempts on, just past and beyond the bounds, on two steps
    onboarding, run_id = make_tenant().onboarding, uuid.uuid4()
    durations = {STEP_NAMES[0]: [0.0, 0.05, 0.051, 0.1, 1.0, 180.0, 180.001, 900.0], STEP_NAMES[2]: [2.5, 2.501]}
    for step, seconds in durations.items():
        for attempt, duration in enumerate(seconds, start=1):
            log_attempt(onboarding, run_id, step, attempt, duration)
    # when
    rows = {row[0]: row for row in step_duration_rows()}
    # then each bucket counts the attempts at most its bound, as Prometheus's "le" reads
    for step, seconds in durations.items():
        _, count, total, *cumulative = rows[step]
        assert count == len(seconds)
        assert total == pytest.approx(sum(seconds), abs=0.001)
        assert cumulative == [sum(1 for s in seconds if s <= bound) for bound in DURATION_BUCKETS]
