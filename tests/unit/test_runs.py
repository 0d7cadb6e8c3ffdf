"""The run lifecycle (provisioning.runs) pinned down without a broker: the state right after an operator's request,
cancel while a step runs, continue past a skipped optional step, and the sweeper's resume called on its own."""

from __future__ import annotations

import pytest
from django.utils import timezone

from moran.errors import NoActiveRun, NothingToContinue, RunActive
from provisioning import execution, runs
from provisioning.execution import StepOutcome, step_execute
from provisioning.models import Onboarding, ProvisioningRun, SandboxFault, StepAttempt, StepLog
from provisioning.runs import (
    first_incomplete,
    onboarding_cancel,
    onboarding_continue,
    onboarding_retry,
    onboarding_start,
    run_resume,
)
from provisioning.state import ANY_RUN, Changed, onboarding_write
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db

ERROR = {"type": "EngineValidationError", "message": "no", "engine_status": 417}


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing records it."""


@pytest.fixture
def sent(monkeypatch):
    """Runs are committed but their chains go nowhere: what was sent is recorded, nothing runs."""
    calls = []
    monkeypatch.setattr(runs, "run_enqueue", lambda *, run_id: calls.append(run_id) or True)
    return calls


def entry(status, *, attempts=1, error=None, result=None, run_id=None):
    stamp = "2026-01-01T00:00:00Z" if status != "pending" else None
    return {
        "status": status,
        "attempts": attempts,
        "started_at": stamp,
        "finished_at": stamp if status not in ("pending", "running") else None,
        "error": error,
        "result": result,
        "run_id": run_id,
    }


def set_steps(onboarding, **entries) -> Onboarding:
    """Write step states by hand through the one writer (by index: ``s4=entry(...)``)."""
    by_name = {STEP_NAMES[int(key[1:])]: value for key, value in entries.items()}
    written, _ = onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: {**steps, **by_name})
    return written


def steps_of(onboarding) -> dict:
    return Onboarding.objects.get(pk=onboarding.pk).provisioning_steps


def deliver(onboarding, step_name):
    onboarding.refresh_from_db()
    return step_execute(
        onboarding_id=onboarding.pk, run_id=str(onboarding.run_id), step_name=step_name, retries=0, max_retries=3
    )


def die_in(onboarding, step_name, monkeypatch):
    def dies(step, ctx):
        raise WorkerDied()

    with monkeypatch.context() as m:
        m.setattr(execution, "execute", dies)
        with pytest.raises(WorkerDied):
            deliver(onboarding, step_name)


# --- right after the request -------------------------------------------------------------------------------------
def test_continue_claims_the_onboarding_and_resets_only_what_it_will_run(sent, on_commit):
    # given steps 0-3 completed, 4 failed, 6 skipped, 7 completed, 8 failed; no run active
    tenant = make_tenant()
    done = {f"s{i}": entry("completed", result={"n": i}) for i in range(4)}
    set_steps(
        tenant.onboarding,
        **done,
        s4=entry("failed", attempts=2, error=ERROR, result={"old": 1}),
        s6=entry("skipped", error=ERROR),
        s7=entry("completed"),
        s8=entry("failed", error=ERROR),
    )
    before = steps_of(tenant.onboarding)
    started = timezone.now()
    # when
    run = on_commit(onboarding_continue, onboarding=tenant.onboarding, requested_by="op")
    # then: the run and the onboarding's claim on it
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (run.kind, run.start_index, run.requested_by, run.outcome) == ("continue", 4, "op", "active")
    assert (onboarding.run_id, onboarding.status, onboarding.current_step) == (run.id, "IN_PROGRESS", STEP_NAMES[4])
    assert onboarding.started_at >= started and onboarding.finished_at is None
    assert sent == [run.id]
    # and the steps: before the start untouched, from it every step that is not completed is pending again
    steps = onboarding.provisioning_steps
    assert all(steps[STEP_NAMES[i]] == before[STEP_NAMES[i]] for i in (0, 1, 2, 3, 7))
    for i in (4, 5, 6, 8, 9):
        assert steps[STEP_NAMES[i]] == {
            **before[STEP_NAMES[i]],
            "status": "pending",
            "error": None,
            "started_at": None,
            "finished_at": None,
        }, STEP_NAMES[i]
    assert steps[STEP_NAMES[4]]["attempts"] == 2 and steps[STEP_NAMES[4]]["result"] == {"old": 1}
    line = StepLog.objects.filter(onboarding=onboarding).last()
    assert (line.message, line.run_id, line.level) == ("continue requested by op: a new run starts", run.id, "info")


def test_retry_resets_every_step_from_step_0_and_keeps_the_counts(sent):
    # given a completed onboarding
    tenant = make_tenant()
    set_steps(tenant.onboarding, **{f"s{i}": entry("completed", attempts=i + 1) for i in range(10)})
    # when
    run = onboarding_retry(onboarding=tenant.onboarding)
    # then
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (run.kind, run.start_index, run.requested_by) == ("retry", 0, "")
    assert (onboarding.status, onboarding.current_step, onboarding.progress) == ("IN_PROGRESS", STEP_NAMES[0], 0)
    steps = [onboarding.provisioning_steps[name] for name in STEP_NAMES]
    assert [e["status"] for e in steps] == ["pending"] * 10
    assert [e["attempts"] for e in steps] == list(range(1, 11))
    assert all(e["started_at"] is None and e["finished_at"] is None for e in onboarding.provisioning_steps.values())
    assert StepLog.objects.filter(onboarding=onboarding).last().message == "retry requested: a new run starts"


def test_start_claims_a_pending_onboarding_once(sent, on_commit):
    tenant = make_tenant()
    # when
    run = on_commit(onboarding_start, onboarding=tenant.onboarding, requested_by="x" * 200)
    # then
    assert (run.kind, run.start_index, len(run.requested_by)) == ("start", 0, 150)
    with pytest.raises(RunActive, match="already active"):
        onboarding_start(onboarding=tenant.onboarding)
    with pytest.raises(RunActive, match="already active"):
        onboarding_continue(onboarding=tenant.onboarding)
    assert ProvisioningRun.objects.filter(onboarding=tenant.onboarding).count() == 1 and sent == [run.id]


def test_start_is_refused_once_provisioning_has_started(sent):
    tenant = make_tenant()
    set_steps(tenant.onboarding, s0=entry("failed", error=ERROR))
    with pytest.raises(RunActive, match="already started"):
        onboarding_start(onboarding=tenant.onboarding)
    assert sent == []


def test_continue_is_refused_when_every_step_is_completed_or_skipped(sent):
    tenant = make_tenant()
    set_steps(tenant.onboarding, **{f"s{i}": entry("skipped" if i == 6 else "completed") for i in range(10)})
    with pytest.raises(NothingToContinue, match=f"Every step of '{tenant.slug}' is completed: nothing to continue"):
        onboarding_continue(onboarding=tenant.onboarding)
    assert sent == [] and not ProvisioningRun.objects.exists()


def test_a_new_onboarding_has_every_step_pending_and_step_0_current():
    onboarding = Onboarding.objects.get(pk=make_tenant().onboarding.pk)
    assert (onboarding.status, onboarding.current_step, onboarding.run_id) == ("PENDING", STEP_NAMES[0], None)
    assert set(onboarding.provisioning_steps) == set(STEP_NAMES)
    assert all(onboarding.provisioning_steps[n]["status"] == "pending" for n in STEP_NAMES)


def test_first_incomplete_skips_completed_and_skipped_steps():
    steps = {name: entry("completed") for name in STEP_NAMES}
    assert first_incomplete(steps) is None
    steps[STEP_NAMES[6]] = entry("skipped")
    assert first_incomplete(steps) is None
    steps[STEP_NAMES[8]] = entry("failed")
    steps[STEP_NAMES[9]] = entry("pending")
    assert first_incomplete(steps) == 8


# --- cancel ---------------------------------------------------------------------------------------------------------
def test_cancel_while_a_step_runs_ends_the_run_and_fences_the_step(sent, monkeypatch):
    # given step 0 completed and step 1 running (its worker still talking to the engine)
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)
    assert deliver(tenant.onboarding, STEP_NAMES[0]).kind == "done"
    die_in(tenant.onboarding, STEP_NAMES[1], monkeypatch)
    before = steps_of(tenant.onboarding)
    # when
    cancelled = onboarding_cancel(onboarding=tenant.onboarding, requested_by="op")
    # then the run ended as cancelled
    run.refresh_from_db()
    assert (run.outcome, run.finished_at is not None) == ("cancelled", True)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (cancelled.status, cancelled.run_id) == ("CANCELLED", None)
    assert (onboarding.status, onboarding.run_id, onboarding.current_step) == ("CANCELLED", None, STEP_NAMES[1])
    assert onboarding.finished_at is not None and onboarding.steps_completed == 1
    # and the running step is pending again with the reason; the others are untouched
    steps = onboarding.provisioning_steps
    assert steps[STEP_NAMES[0]] == before[STEP_NAMES[0]]
    assert steps[STEP_NAMES[1]]["status"] == "pending" and steps[STEP_NAMES[1]]["attempts"] == 1
    assert steps[STEP_NAMES[1]]["error"] == {
        "type": "Cancelled",
        "message": "cancelled while running",
        "engine_status": None,
    }
    assert steps[STEP_NAMES[1]]["finished_at"].endswith("Z")
    attempt = StepAttempt.objects.get(onboarding=onboarding, step=STEP_NAMES[1])
    assert (attempt.number, attempt.outcome, attempt.ended_by) == (1, "cancelled", "operator")
    assert attempt.error == steps[STEP_NAMES[1]]["error"]
    assert all(steps[n] == before[n] for n in STEP_NAMES[2:])
    lines = list(StepLog.objects.filter(onboarding=onboarding).values_list("step", "attempt", "level", "message"))
    assert lines[-2:] == [
        (STEP_NAMES[1], 1, "info", "attempt 1 cancelled while running"),
        ("", 0, "warning", "run cancelled by op"),
    ]
    # and the running attempt's late result is not recorded
    late = execution._finish(onboarding.pk, str(run.id), STEP_NAMES[1], 1, StepOutcome.DONE, result={})
    assert late.kind == "stale" and steps_of(onboarding) == steps


def test_cancel_resets_a_step_waiting_for_its_retry(sent):
    # given a run whose step 2 waits for a retry
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)
    set_steps(tenant.onboarding, s2=entry("retrying", error=ERROR, run_id=str(run.id)))
    # when
    onboarding_cancel(onboarding=tenant.onboarding)
    # then
    step = steps_of(tenant.onboarding)[STEP_NAMES[2]]
    assert (step["status"], step["error"]["type"]) == ("pending", "Cancelled")
    assert not StepLog.objects.filter(message__contains="cancelled while running").exists()
    assert StepLog.objects.filter(onboarding=tenant.onboarding).last().message == "run cancelled"


def test_cancel_without_a_run_is_refused(sent):
    tenant = make_tenant()
    with pytest.raises(NoActiveRun, match=f"No run is active for tenant '{tenant.slug}': nothing to cancel"):
        onboarding_cancel(onboarding=tenant.onboarding)
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).status == "PENDING"


# --- continue past a skipped optional step ----------------------------------------------------------------------
def test_continue_keeps_a_skipped_optional_step_skipped_and_completes(eager, on_commit):
    # given the optional step 6 skipped and the required step 7 failed (once)
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step=STEP_NAMES[6], kind=SandboxFault.Kind.PERMANENT, remaining=5)
    SandboxFault.objects.create(tenant=tenant, step=STEP_NAMES[7], kind=SandboxFault.Kind.PERMANENT)
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    skipped = steps_of(tenant.onboarding)[STEP_NAMES[6]]
    assert skipped["status"] == "skipped"
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).status == "PARTIAL"
    # when
    run = on_commit(onboarding_continue, onboarding=tenant.onboarding)
    # then the run started after the skipped step, which stays as it was, and the onboarding is completed
    run.refresh_from_db()
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (run.start_index, run.outcome) == (7, "completed")
    assert onboarding.provisioning_steps[STEP_NAMES[6]] == skipped
    assert (onboarding.status, onboarding.steps_completed, onboarding.progress) == ("COMPLETED", 9, 100)


# --- the sweeper's resume, on its own ---------------------------------------------------------------------------------
def resume(onboarding, requested_by="sweeper"):
    def change(ob, steps):
        return Changed(steps, result=run_resume(ob, steps, requested_by=requested_by))

    return onboarding_write(onboarding.pk, run_id=ANY_RUN, change=change)


def test_run_resume_supersedes_the_run_and_begins_one_from_the_first_step_not_done(
    sent, django_capture_on_commit_callbacks
):
    # given a run whose step 3 failed, with the optional step 6 skipped and step 7 completed
    tenant = make_tenant()
    old = onboarding_start(onboarding=tenant.onboarding)
    set_steps(
        tenant.onboarding,
        **{f"s{i}": entry("completed") for i in range(3)},
        s3=entry("retrying", error=ERROR, run_id=str(old.id)),
        s6=entry("skipped", error=ERROR),
        s7=entry("completed"),
    )
    before = steps_of(tenant.onboarding)
    # when
    with django_capture_on_commit_callbacks(execute=True):
        onboarding, new = resume(tenant.onboarding)
    # then
    old.refresh_from_db()
    assert (old.outcome, old.finished_at is not None) == ("superseded", True)
    assert (new.kind, new.start_index, new.requested_by, new.outcome) == ("continue", 3, "sweeper", "active")
    assert (onboarding.run_id, onboarding.status, onboarding.current_step) == (new.id, "IN_PROGRESS", STEP_NAMES[3])
    assert onboarding.finished_at is None and sent == [new.id]
    steps = onboarding.provisioning_steps
    for i in (3, 4, 5, 6, 8, 9):
        want = {**before[STEP_NAMES[i]], "status": "pending", "started_at": None, "finished_at": None}
        assert steps[STEP_NAMES[i]] == want, STEP_NAMES[i]
    assert steps[STEP_NAMES[3]]["error"] == ERROR  # the reason stays until the step runs again
    assert all(steps[STEP_NAMES[i]] == before[STEP_NAMES[i]] for i in (0, 1, 2, 7))


def test_run_resume_ends_the_run_when_every_step_is_done(sent):
    # given every step completed but the run still in charge (its last message was lost after the write)
    tenant = make_tenant()
    old = onboarding_start(onboarding=tenant.onboarding)
    set_steps(tenant.onboarding, **{f"s{i}": entry("completed") for i in range(10)})
    # when
    onboarding, new = resume(tenant.onboarding)
    # then
    old.refresh_from_db()
    assert new is None and old.outcome == "completed"
    assert (onboarding.run_id, onboarding.status) == (None, "COMPLETED")
    assert ProvisioningRun.objects.filter(onboarding=onboarding).count() == 1


def test_run_started_at_moves_with_each_new_run(sent):
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    first = Onboarding.objects.get(pk=tenant.onboarding.pk).started_at
    onboarding_cancel(onboarding=tenant.onboarding)
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).finished_at >= first
    onboarding_continue(onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert onboarding.started_at > first and onboarding.finished_at is None


# --- sending a run ----------------------------------------------------------------------------------------------------
def test_run_signature_chains_the_step_tasks_by_name_from_the_start_index(sent, settings):
    # given a run from step 7
    settings.PROVISIONING_QUEUE = "prov-q"
    tenant = make_tenant(slug="sig-co")
    set_steps(tenant.onboarding, **{f"s{i}": entry("completed") for i in range(7)})
    run = onboarding_continue(onboarding=tenant.onboarding)
    # when
    canvas = runs.run_signature(run)
    # then
    assert [t.task for t in canvas.tasks] == [f"provisioning.{name}" for name in STEP_NAMES[7:]]
    for task in canvas.tasks:
        assert (tuple(task.args), task.kwargs) == ((tenant.onboarding.pk, str(run.id)), {"tenant": "sig-co"})
        assert task.immutable and task.options["queue"] == "prov-q"


@pytest.fixture
def committed_run(monkeypatch):
    """A run claimed with its enqueue held back, so that the test calls run_enqueue itself."""
    monkeypatch.setattr(runs, "run_enqueue", lambda *, run_id: True)
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)
    monkeypatch.undo()
    return run


class Canvas:
    def __init__(self, exc=None):
        self.exc = exc

    def apply_async(self):
        if self.exc:
            raise self.exc


def test_run_enqueue_marks_a_sent_run_enqueued_once(committed_run, monkeypatch):
    # given another run not sent yet
    monkeypatch.setattr(runs, "run_signature", lambda run: Canvas())
    other = ProvisioningRun.objects.create(onboarding=make_tenant().onboarding, kind="start")
    # when
    assert runs.run_enqueue(run_id=committed_run.id) is True
    # then only this run is marked
    committed_run.refresh_from_db()
    first = committed_run.enqueued_at
    assert first is not None
    assert ProvisioningRun.objects.get(pk=other.pk).enqueued_at is None
    # and a run sent again (by the sweeper) keeps the moment it first reached the broker
    assert runs.run_enqueue(run_id=committed_run.id) is True
    committed_run.refresh_from_db()
    assert committed_run.enqueued_at == first


def test_run_enqueue_counts_a_failed_step_of_an_eager_chain_as_sent(committed_run, monkeypatch):
    monkeypatch.setattr(runs, "run_signature", lambda run: Canvas(runs.StepFailedError("step_4 failed")))
    assert runs.run_enqueue(run_id=committed_run.id) is True
    committed_run.refresh_from_db()
    assert committed_run.enqueued_at is not None


def test_run_enqueue_leaves_a_run_the_broker_refused_for_the_sweeper(committed_run, monkeypatch, caplog):
    # given a broker that cannot be reached
    monkeypatch.setattr(runs, "run_signature", lambda run: Canvas(ConnectionRefusedError("no broker")))
    # when
    assert runs.run_enqueue(run_id=committed_run.id) is False
    # then
    committed_run.refresh_from_db()
    assert committed_run.enqueued_at is None
    line = StepLog.objects.filter(onboarding_id=committed_run.onboarding_id).last()
    assert (line.level, line.run_id) == ("error", committed_run.id)
    assert line.message == "could not reach the task broker (ConnectionRefusedError); the run will be sent again"
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [f"could not enqueue run {committed_run.id}: ConnectionRefusedError"]


def test_a_run_requested_by_nobody_says_so(sent):
    # given / when start and continue without a requester (the embedded mode, scripts)
    tenant = make_tenant()
    started = onboarding_start(onboarding=tenant.onboarding)
    onboarding_cancel(onboarding=tenant.onboarding)
    continued = onboarding_continue(onboarding=tenant.onboarding)
    # then
    assert (started.requested_by, continued.requested_by) == ("", "")
    messages = list(StepLog.objects.filter(onboarding=tenant.onboarding).values_list("message", flat=True))
    assert messages == ["start requested: a new run starts", "run cancelled", "continue requested: a new run starts"]
