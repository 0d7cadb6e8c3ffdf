"""The sweeper (provisioning.recovery), on the real database: what it detects, how it resolves it, and that two
sweepers at once act once. A worker's death is simulated here by a step that never ends (its process "dies" after
the step began); the fault tests kill real workers."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from moran.errors import RunActive
from provisioning import execution, recovery, runs
from provisioning.execution import step_execute
from provisioning.locks import step_lease
from provisioning.models import OnboardingStatus, ProvisioningRun, StepAttempt, StepLog
from provisioning.recovery import SWEEPER, sweep
from provisioning.runs import onboarding_continue, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.faultkit import assert_attempts_add_up, engine_duplicates

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing records it."""


@pytest.fixture
def lost_broker(monkeypatch):
    """Runs are committed and 'reach the broker' (enqueued_at set), but their messages are lost: nothing runs."""
    state = {"lose": True}
    real = runs.run_enqueue

    def run_enqueue(*, run_id):
        if not state["lose"]:
            return real(run_id=run_id)
        ProvisioningRun.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
        return True

    monkeypatch.setattr(runs, "run_enqueue", run_enqueue)
    return state


def later(seconds: float) -> dt.datetime:
    return timezone.now() + dt.timedelta(seconds=seconds)


def run_steps(onboarding, upto: int):
    """Run steps 0..upto-1 of the run in charge, as a worker would."""
    onboarding.refresh_from_db()
    for name in STEP_NAMES[:upto]:
        outcome = step_execute(
            onboarding_id=onboarding.pk, run_id=str(onboarding.run_id), step_name=name, retries=0, max_retries=3
        )
        assert outcome.kind == "done", outcome


def die_in_step(onboarding, step_name, monkeypatch):
    """The worker running ``step_name`` dies after the step began (SIGKILL): the step stays 'running'."""
    onboarding.refresh_from_db()

    def dies(step, ctx):
        raise WorkerDied()

    with monkeypatch.context() as m:
        m.setattr(execution, "execute", dies)
        with pytest.raises(WorkerDied):
            step_execute(
                onboarding_id=onboarding.pk,
                run_id=str(onboarding.run_id),
                step_name=step_name,
                retries=0,
                max_retries=3,
            )


@pytest.fixture
def stuck(lost_broker, monkeypatch):
    """A tenant whose run died in step 3 (steps 0-2 completed)."""
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    run_steps(tenant.onboarding, 3)
    die_in_step(tenant.onboarding, STEP_NAMES[3], monkeypatch)
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.provisioning_steps[STEP_NAMES[3]]["status"] == "running"
    return tenant


def test_it_leaves_a_step_alone_within_its_deadline(stuck, settings):
    # given a step running for less than its deadline
    before = stuck.onboarding.version
    # when
    actions = sweep()
    # then
    stuck.onboarding.refresh_from_db()
    assert actions == [] and stuck.onboarding.version == before


def test_it_resumes_a_run_whose_step_is_running_past_its_deadline(stuck, lost_broker, settings, eager):
    # given
    old_run = stuck.onboarding.run_id
    lost_broker["lose"] = False
    # when
    actions = sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))
    # then: a new run from the interrupted step, which completes; the old run is superseded
    assert [(a.action, a.problem) for a in actions] == [("resumed", "stuck")]
    onboarding = stuck.onboarding
    onboarding.refresh_from_db()
    assert onboarding.status == OnboardingStatus.COMPLETED
    new_run = ProvisioningRun.objects.filter(onboarding=onboarding).first()
    assert (new_run.requested_by, new_run.start_index, new_run.outcome) == (SWEEPER, 3, "completed")
    assert ProvisioningRun.objects.get(pk=old_run).outcome == ProvisioningRun.Outcome.SUPERSEDED
    assert onboarding.provisioning_steps[STEP_NAMES[3]]["attempts"] == 2
    assert StepLog.objects.filter(onboarding=onboarding, message__contains="the sweeper resumed").count() == 1
    assert_attempts_add_up(onboarding)
    assert engine_duplicates([stuck]) == []


def test_it_marks_the_step_interrupted_after_resuming_too_often(stuck, lost_broker, settings, monkeypatch, eager):
    # given the sweeper already resumed this onboarding as often as it may, and the step dies every time
    settings.SWEEP_MAX_RESUMES = 2
    for _ in range(2):
        assert [a.action for a in sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))] == ["resumed"]
        die_in_step(stuck.onboarding, STEP_NAMES[3], monkeypatch)
    # when
    actions = sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))
    # then: the step is failed with an "interrupted" error, the onboarding PARTIAL with the reason
    assert [a.action for a in actions] == ["marked"]
    onboarding = stuck.onboarding
    onboarding.refresh_from_db()
    entry = onboarding.provisioning_steps[STEP_NAMES[3]]
    assert (onboarding.status, onboarding.run_id, onboarding.steps_completed) == (OnboardingStatus.PARTIAL, None, 3)
    assert entry["status"] == "failed" and entry["error"]["type"] == "Interrupted"
    assert "interrupted" in entry["error"]["message"] and "continue" in entry["error"]["message"]
    # and the attempt rows say who ended each attempt
    found = StepAttempt.objects.filter(onboarding=onboarding, step=STEP_NAMES[3]).order_by("number")
    assert [(a.outcome, a.ended_by) for a in found] == [("interrupted", "sweeper")] * 3
    assert_attempts_add_up(onboarding)
    # and continue works
    lost_broker["lose"] = False
    onboarding_continue(onboarding=onboarding)
    onboarding.refresh_from_db()
    assert onboarding.status == OnboardingStatus.COMPLETED
    assert_attempts_add_up(onboarding)


def test_it_leaves_a_step_whose_lease_is_held(stuck, settings):
    # given a live session holding the step's lease (its worker is alive, just slow)
    run_id = stuck.onboarding.run_id
    holder = threading.Event()
    release = threading.Event()

    def hold():
        with step_lease(run_id, STEP_NAMES[3]) as held:
            assert held
            holder.set()
            release.wait(30)
        connection.close()

    thread = threading.Thread(target=hold)
    thread.start()
    holder.wait(10)
    try:
        # when
        actions = sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))
    finally:
        release.set()
        thread.join()
    # then
    assert [a.action for a in actions] == ["left"]
    stuck.onboarding.refresh_from_db()
    assert stuck.onboarding.run_id == run_id


def test_two_sweepers_at_once_act_once(stuck, settings, monkeypatch):
    # given two sweepers (two beat instances by mistake) passing at the same moment
    barrier = threading.Barrier(4)
    results = []
    # every pass has read the run before any acts: a pass that began after another had resumed it would read the
    # new run, which the clock moved 301 s on makes look lost too (a separate pass, not two at once)
    acting, act = threading.Barrier(4), recovery.sweep_onboarding

    def sweep_onboarding_together(*args, **kwargs):
        acting.wait(10)
        return act(*args, **kwargs)

    monkeypatch.setattr(recovery, "sweep_onboarding", sweep_onboarding_together)

    def sweeper():
        try:
            barrier.wait(10)
            results.append([a.action for a in sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))])
        finally:
            connection.close()

    threads = [threading.Thread(target=sweeper) for _ in range(4)]
    # when
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # then exactly one resumed it
    assert sorted(map(tuple, results)) == [(), (), (), ("resumed",)]
    assert ProvisioningRun.objects.filter(onboarding=stuck.onboarding, requested_by=SWEEPER).count() == 1
    assert StepLog.objects.filter(onboarding=stuck.onboarding, message__contains="interrupted").count() == 1


def test_it_sends_again_a_run_that_never_reached_the_broker(settings, monkeypatch, eager):
    # given a run committed while the broker was unreachable
    tenant = make_tenant()

    def broker_down(*, run_id):
        StepLog.objects.create(onboarding=tenant.onboarding, run_id=run_id, message="could not reach the task broker")
        return False

    with monkeypatch.context() as m:
        m.setattr(runs, "run_enqueue", broker_down)
        run = onboarding_start(onboarding=tenant.onboarding)
    run.refresh_from_db()
    assert run.enqueued_at is None
    assert sweep() == []  # within its grace period
    # when
    actions = sweep(now=later(settings.SWEEP_ENQUEUE_GRACE + 1))
    # then
    assert [(a.action, a.problem) for a in actions] == [("resumed", "never_enqueued")]
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    run.refresh_from_db()
    assert run.outcome == ProvisioningRun.Outcome.SUPERSEDED
    assert_attempts_add_up(tenant.onboarding)


def test_it_resumes_a_run_whose_next_message_was_lost(lost_broker, settings, eager):
    # given a run whose step 5 completed and whose next message was lost with the broker (no worker begins anything)
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    run_steps(tenant.onboarding, 6)
    lost_broker["lose"] = False
    assert sweep(now=later(settings.SWEEP_IDLE_GRACE - 3)) == []
    # when
    actions = sweep(now=later(settings.SWEEP_IDLE_GRACE + 1))
    # then
    assert [(a.action, a.problem) for a in actions] == [("resumed", "lost")]
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.COMPLETED
    assert ProvisioningRun.objects.filter(onboarding=tenant.onboarding).first().start_index == 6
    assert_attempts_add_up(tenant.onboarding)


def test_a_late_task_of_a_superseded_run_changes_nothing(stuck, settings, lost_broker):
    # given the sweeper replaced the run that died
    old_run = str(stuck.onboarding.run_id)
    sweep(now=later(settings.SWEEP_STEP_DEADLINE + 1))
    stuck.onboarding.refresh_from_db()
    before = (stuck.onboarding.version, stuck.onboarding.provisioning_steps)
    # when the old run's message of step 3 is delivered late
    outcome = step_execute(
        onboarding_id=stuck.onboarding.pk, run_id=old_run, step_name=STEP_NAMES[3], retries=0, max_retries=3
    )
    # then
    assert outcome.kind == "stale"
    stuck.onboarding.refresh_from_db()
    assert (stuck.onboarding.version, stuck.onboarding.provisioning_steps) == before
    with pytest.raises(RunActive):
        onboarding_continue(onboarding=stuck.onboarding)


def test_the_command_says_what_it_did(stuck, settings, capsys, monkeypatch):
    # given a step whose worker died, and the liveness grace (its default) gone by: the command reads the clock
    real_now = timezone.now
    monkeypatch.setattr(timezone, "now", lambda: real_now() + dt.timedelta(seconds=settings.SWEEP_LIVENESS_GRACE + 1))
    # when
    call_command("sweep_provisioning", "--dry-run")
    dry = capsys.readouterr().out
    call_command("sweep_provisioning")
    out = capsys.readouterr().out
    # then
    assert "dead" in dry and "nothing changed" in dry
    assert f"{stuck.slug}: resumed (dead)" in out and "done: 1 resumed" in out


def test_it_does_not_send_again_a_run_that_began_without_enqueued_at(lost_broker, settings):
    # given a run whose first step began although enqueued_at was never set (the embedded mode runs the chain before
    # it sets it; or the connection was lost just after the broker took the chain)
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)
    ProvisioningRun.objects.filter(pk=run.pk).update(enqueued_at=None)
    run_steps(tenant.onboarding, 2)
    # when the sweeper passes after the enqueue grace but before the idle rule would look at the run (both are 15 s by
    # default: the grace is shortened only to tell the two rules apart; no recovery time is measured here)
    settings.SWEEP_ENQUEUE_GRACE = settings.SWEEP_IDLE_GRACE - 5
    actions = sweep(now=later(settings.SWEEP_ENQUEUE_GRACE + 1))
    # then it is not taken for never enqueued (nor sent twice)
    assert actions == []
    assert ProvisioningRun.objects.filter(onboarding=tenant.onboarding).count() == 1


def test_it_never_gives_up_on_a_stalled_run(lost_broker, settings):
    # given a run whose messages keep being lost (a broker that restarts empty, again and again)
    settings.SWEEP_MAX_RESUMES = 1
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    run_steps(tenant.onboarding, 2)
    # when the sweeper finds it stalled more often than it may resume a step that dies
    actions = [a.action for _ in range(3) for a in sweep(now=later(settings.SWEEP_STALL_DEADLINE + 1))]
    # then it resumes it every time: a lost message is not a failure of the tenant
    assert actions == ["resumed"] * 3
    tenant.onboarding.refresh_from_db()
    assert tenant.onboarding.status == OnboardingStatus.IN_PROGRESS
