"""The attempt rows (provisioning.attempts): one per attempt, begun and closed with the step state they describe."""

from __future__ import annotations

import pytest

from provisioning import execution, runs
from provisioning.execution import step_execute
from provisioning.models import SandboxFault, StepAttempt
from provisioning.runs import onboarding_cancel, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.faultkit import assert_attempts_add_up

pytestmark = pytest.mark.django_db


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing records it."""


@pytest.fixture(autouse=True)
def fast_retries(settings):
    settings.STEP_RETRY_BACKOFF = 0.01
    settings.STEP_RETRY_BACKOFF_MAX = 0.02


@pytest.fixture
def quiet_broker(monkeypatch):
    """Runs are committed but nothing runs them: the test delivers steps by hand."""
    monkeypatch.setattr(runs, "run_enqueue", lambda *, run_id: True)


def deliver(onboarding, step_name, **kwargs):
    onboarding.refresh_from_db()
    return step_execute(
        onboarding_id=onboarding.pk,
        run_id=str(onboarding.run_id),
        step_name=step_name,
        retries=kwargs.get("retries", 0),
        max_retries=3,
    )


def die_in(onboarding, step_name, monkeypatch):
    def dies(step, ctx):
        raise WorkerDied()

    with monkeypatch.context() as m:
        m.setattr(execution, "execute", dies)
        with pytest.raises(WorkerDied):
            deliver(onboarding, step_name)


def rows(onboarding, step=None):
    qs = StepAttempt.objects.filter(onboarding=onboarding).order_by("step", "number")
    if step:
        qs = qs.filter(step=step)
    return [(a.step, a.number, a.outcome, a.ended_by) for a in qs]


def test_it_writes_one_completed_attempt_per_step_of_a_clean_run(eager, on_commit):
    # given / when
    tenant = make_tenant()
    run = on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    attempts = list(StepAttempt.objects.filter(onboarding=tenant.onboarding).order_by("id"))
    assert [(a.step, a.number, a.outcome, a.ended_by) for a in attempts] == [
        (name, 1, "completed", "worker") for name in STEP_NAMES
    ]
    assert all(a.run_id == run.id and a.finished_at and a.duration_ms is not None and a.worker for a in attempts)
    assert all(a.error is None for a in attempts)
    assert_attempts_add_up(tenant.onboarding)


def test_it_records_a_retried_attempt_with_its_error(eager, on_commit):
    # given an engine that answers 503 once at step 1
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step=STEP_NAMES[1], kind=SandboxFault.Kind.TRANSIENT)
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    first, second = StepAttempt.objects.filter(onboarding=tenant.onboarding, step=STEP_NAMES[1]).order_by("number")
    assert (first.outcome, second.outcome) == ("retrying", "completed")
    assert first.error["engine_status"] == 503
    assert_attempts_add_up(tenant.onboarding)


def test_it_records_failed_and_skipped_attempts(eager, on_commit):
    # given permanent faults at the optional step 6 and the required step 7
    tenant = make_tenant()
    for step in (STEP_NAMES[6], STEP_NAMES[7]):
        SandboxFault.objects.create(tenant=tenant, step=step, kind=SandboxFault.Kind.PERMANENT)
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    assert rows(tenant.onboarding, STEP_NAMES[6]) == [(STEP_NAMES[6], 1, "skipped", "worker")]
    assert rows(tenant.onboarding, STEP_NAMES[7]) == [(STEP_NAMES[7], 1, "failed", "worker")]
    failed = StepAttempt.objects.get(onboarding=tenant.onboarding, step=STEP_NAMES[7])
    assert failed.error["engine_status"] == 417
    assert not StepAttempt.objects.filter(onboarding=tenant.onboarding, step__in=STEP_NAMES[8:]).exists()
    assert_attempts_add_up(tenant.onboarding)


def test_a_redelivered_step_closes_the_lost_attempt_as_interrupted(quiet_broker, monkeypatch):
    # given step 0's worker died after the attempt began
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    die_in(tenant.onboarding, STEP_NAMES[0], monkeypatch)
    assert rows(tenant.onboarding) == [(STEP_NAMES[0], 1, "running", "")]
    # when its message is delivered again
    outcome = deliver(tenant.onboarding, STEP_NAMES[0])
    # then
    assert outcome.kind == "done"
    assert rows(tenant.onboarding) == [
        (STEP_NAMES[0], 1, "interrupted", "redelivery"),
        (STEP_NAMES[0], 2, "completed", "worker"),
    ]
    assert_attempts_add_up(tenant.onboarding)


def test_cancel_closes_the_running_attempt_as_cancelled(quiet_broker, monkeypatch):
    # given step 0 running (its worker still talking to the engine)
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    die_in(tenant.onboarding, STEP_NAMES[0], monkeypatch)
    # when an operator cancels the run
    onboarding_cancel(onboarding=tenant.onboarding, requested_by="op")
    # then
    attempt = StepAttempt.objects.get(onboarding=tenant.onboarding)
    assert (attempt.outcome, attempt.ended_by, attempt.error["type"]) == ("cancelled", "operator", "Cancelled")
    assert attempt.finished_at is not None
    assert_attempts_add_up(tenant.onboarding)


def test_a_late_result_of_a_closed_attempt_does_not_reopen_or_change_it(quiet_broker, monkeypatch):
    # given attempt 1 of step 0 closed as interrupted and attempt 2 completed
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    die_in(tenant.onboarding, STEP_NAMES[0], monkeypatch)
    deliver(tenant.onboarding, STEP_NAMES[0])
    # when attempt 1's worker reports after all
    late = execution._finish(
        tenant.onboarding.pk, str(tenant.onboarding.run_id), STEP_NAMES[0], 1, execution.StepOutcome.DONE, result={}
    )
    # then
    assert late.kind == "stale"
    assert [r[2] for r in rows(tenant.onboarding)] == ["interrupted", "completed"]
