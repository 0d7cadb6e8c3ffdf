"""The one writer of step state and the status rules of the brief."""

import threading
import uuid

import pytest
from django.db import OperationalError, connection

from provisioning import state
from provisioning.models import Onboarding, OnboardingStatus, StepLog, StepStatus
from provisioning.state import ANY_RUN, Changed, Stale, derive, initial_steps, now_iso, onboarding_write, step_log_row
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant


def steps_with(**statuses):
    steps = initial_steps()
    for name, status in statuses.items():
        full = next(n for n in STEP_NAMES if n.startswith(name + "_"))
        steps[full]["status"] = status
    return steps


@pytest.mark.parametrize(
    ("statuses", "run_active", "previous", "expected"),
    [
        ({}, False, "PENDING", ("PENDING", "step_0_engine_check", 0, 0)),
        ({"step_0": "running"}, True, "IN_PROGRESS", ("IN_PROGRESS", "step_0_engine_check", 0, 0)),
        ({"step_0": "failed"}, False, "IN_PROGRESS", ("FAILED", "step_0_engine_check", 0, 0)),
        (
            {
                "step_0": "completed",
                "step_1": "completed",
                "step_2": "completed",
                "step_3": "completed",
                "step_4": "failed",
            },
            False,
            "IN_PROGRESS",
            ("PARTIAL", "step_4_cost_centers", 4, 40),
        ),
        ({**{f"step_{i}": "completed" for i in range(10)}}, False, "IN_PROGRESS", ("COMPLETED", None, 10, 100)),
        (
            {**{f"step_{i}": "completed" for i in range(10)}, "step_6": "skipped"},
            False,
            "IN_PROGRESS",
            ("COMPLETED", None, 9, 100),
        ),
        ({"step_0": "completed", "step_1": "running"}, True, "IN_PROGRESS", ("IN_PROGRESS", "step_1_company", 1, 10)),
        ({"step_0": "completed", "step_1": "retrying"}, True, "IN_PROGRESS", ("IN_PROGRESS", "step_1_company", 1, 10)),
        ({"step_0": "completed"}, False, "CANCELLED", ("CANCELLED", "step_1_company", 1, 10)),
        # the running (or retrying) step is current even when an earlier step is not done
        (
            {"step_0": "completed", "step_3": "running"},
            True,
            "IN_PROGRESS",
            ("IN_PROGRESS", "step_3_chart_of_accounts", 1, 10),
        ),
        ({"step_2": "failed", "step_5": "retrying"}, True, "IN_PROGRESS", ("IN_PROGRESS", "step_5_warehouses", 0, 0)),
        # skipped counts towards progress, not towards steps completed
        ({"step_0": "completed", "step_6": "skipped"}, False, "IN_PROGRESS", ("PARTIAL", "step_1_company", 1, 20)),
        ({"step_6": "skipped"}, False, "IN_PROGRESS", ("FAILED", "step_0_engine_check", 0, 10)),
        ({"step_0": "completed"}, True, "CANCELLED", ("IN_PROGRESS", "step_1_company", 1, 10)),
    ],
)
def test_it_derives_status_current_step_and_progress(statuses, run_active, previous, expected):
    derived = derive(steps_with(**statuses), run_active=run_active, previous_status=previous)
    assert (derived.status, derived.current_step, derived.steps_completed, derived.progress) == expected


def test_a_required_step_skipped_is_not_completed():
    steps = steps_with(**{**{f"step_{i}": "completed" for i in range(10)}, "step_7": "skipped"})
    assert derive(steps, run_active=False, previous_status="IN_PROGRESS").status == "PARTIAL"


@pytest.mark.django_db
def test_it_refuses_a_write_from_a_run_that_is_not_in_charge():
    # given: an onboarding with no active run
    onboarding = make_tenant().onboarding
    before = Onboarding.objects.get(pk=onboarding.pk)

    def change(ob, steps):
        steps["step_0_engine_check"]["status"] = StepStatus.COMPLETED
        return steps

    # when / then
    with pytest.raises(Stale):
        onboarding_write(onboarding.pk, run_id="6f1e2f1a-0000-4000-8000-000000000000", change=change)
    after = Onboarding.objects.get(pk=onboarding.pk)
    assert after.provisioning_steps == before.provisioning_steps
    assert after.version == before.version


@pytest.mark.django_db
def test_it_saves_a_copy_and_never_mutates_the_stored_dict_in_place():
    onboarding = make_tenant().onboarding
    seen = {}

    def change(ob, steps):
        seen["same_object"] = steps is ob.provisioning_steps
        steps["step_0_engine_check"]["status"] = StepStatus.COMPLETED
        return steps

    written, _ = onboarding_write(onboarding.pk, run_id=ANY_RUN, change=change)
    assert seen["same_object"] is False
    fresh = Onboarding.objects.get(pk=onboarding.pk)
    assert fresh.provisioning_steps["step_0_engine_check"]["status"] == "completed"
    assert fresh.steps_completed == 1 and fresh.status == OnboardingStatus.PARTIAL
    assert written.version == onboarding.version + 1


@pytest.mark.django_db(transaction=True)
def test_two_concurrent_writers_do_not_lose_each_others_update():
    """The seeds' bug, generalised: each writer changes a different step at the same moment; both changes survive
    because every write locks the row and starts from what is stored."""
    if connection.vendor != "postgresql":
        pytest.skip("row locks need PostgreSQL")
    onboarding = make_tenant().onboarding
    barrier = threading.Barrier(len(STEP_NAMES))
    errors = []

    def writer(step_name):
        try:
            barrier.wait()

            def change(ob, steps):
                steps[step_name] = {**steps[step_name], "status": StepStatus.COMPLETED.value, "attempts": 1}
                return steps

            onboarding_write(onboarding.pk, run_id=ANY_RUN, change=change)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(name,)) for name in STEP_NAMES]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    fresh = Onboarding.objects.get(pk=onboarding.pk)
    assert [fresh.provisioning_steps[n]["status"] for n in STEP_NAMES] == ["completed"] * 10
    assert (fresh.status, fresh.steps_completed, fresh.progress, fresh.version) == ("COMPLETED", 10, 100, 10)


# --- the writer's edges -----------------------------------------------------------------------------------------------
def flaky(monkeypatch, failures: int):
    """The writer's transaction loses its connection ``failures`` times, then goes through; sleeps are recorded."""
    real, calls, sleeps = state._onboarding_write, [], []

    def write(*args, **kwargs):
        calls.append(1)
        if len(calls) <= failures:
            raise OperationalError("server closed the connection unexpectedly")
        return real(*args, **kwargs)

    monkeypatch.setattr(state, "_onboarding_write", write)
    monkeypatch.setattr(state.time, "sleep", sleeps.append)
    return calls, sleeps


@pytest.mark.django_db(transaction=True)
def test_it_reconnects_with_backoff_and_applies_the_write(monkeypatch, caplog):
    # given a connection lost six times in a row (the most a write survives)
    onboarding = make_tenant().onboarding
    calls, sleeps = flaky(monkeypatch, failures=state.WRITE_RECONNECTS)
    # when
    written, _ = onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: steps, log="after")
    # then
    assert len(calls) == 7 and sleeps == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert written.version == onboarding.version + 1
    lost = [r.getMessage() for r in caplog.records if "connection lost" in r.getMessage()]
    assert lost == [f"database connection lost while writing onboarding {onboarding.pk}; reconnecting"] * 6


@pytest.mark.django_db(transaction=True)
def test_it_gives_up_after_its_reconnects(monkeypatch):
    onboarding = make_tenant().onboarding
    calls, sleeps = flaky(monkeypatch, failures=state.WRITE_RECONNECTS + 1)
    with pytest.raises(OperationalError):
        onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: steps)
    assert len(calls) == 7 and len(sleeps) == 6


@pytest.mark.django_db
def test_it_never_reconnects_inside_an_outer_transaction(monkeypatch):
    # given a caller's transaction (the test's), which is lost with the connection
    onboarding = make_tenant().onboarding
    calls, sleeps = flaky(monkeypatch, failures=1)
    with pytest.raises(OperationalError):
        onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: steps)
    assert (len(calls), sleeps) == (1, [])


@pytest.mark.django_db
def test_a_write_for_no_run_is_refused_once_a_run_is_in_charge():
    # given no run in charge: a write that expects none goes through
    onboarding = make_tenant().onboarding
    onboarding_write(onboarding.pk, run_id=None, change=lambda ob, steps: steps)
    run_id = uuid.uuid4()
    onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: setattr(ob, "run_id", run_id) or steps)
    # when / then
    with pytest.raises(Stale, match=f"run None is not in charge of onboarding {onboarding.pk} \\(run {run_id} is\\)"):
        onboarding_write(onboarding.pk, run_id=None, change=lambda ob, steps: steps)


@pytest.fixture
def announced(monkeypatch):
    calls = []
    monkeypatch.setattr(state, "onboarding_run_ended", lambda **kwargs: calls.append(kwargs))
    return calls


def start_a_run(onboarding):
    run_id = uuid.uuid4()
    onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: setattr(ob, "run_id", run_id) or steps)
    return run_id


@pytest.mark.django_db
def test_it_announces_a_run_end_once_with_the_end_state_and_logs_it_on_the_run(announced, caplog):
    # given a run in charge, and writes that neither start nor end one
    onboarding = make_tenant().onboarding
    onboarding_write(onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: steps)
    run_id = start_a_run(onboarding)
    onboarding_write(onboarding.pk, run_id=run_id, change=lambda ob, steps: steps)
    assert announced == []

    # when a write of that run ends it
    def end(ob, steps):
        steps[STEP_NAMES[0]]["status"] = StepStatus.FAILED.value
        state.run_end(ob, "stopped")
        return steps

    caplog.clear()
    written, _ = onboarding_write(
        onboarding.pk, run_id=str(run_id), change=end, log="it ended", log_step=STEP_NAMES[0], log_level="error"
    )
    # then
    assert announced == [{"onboarding": written, "run_id": run_id, "status": "FAILED"}]
    line = StepLog.objects.filter(onboarding=onboarding).last()
    assert (line.message, line.run_id, line.step, line.level) == ("it ended", run_id, STEP_NAMES[0], "error")
    record = next(r for r in caplog.records if r.getMessage() == "it ended")
    assert (record.levelname, record.run_id, record.step, record.tenant) == (
        "ERROR",
        str(run_id),
        STEP_NAMES[0],
        onboarding.tenant_id,
    )


@pytest.mark.django_db
def test_it_logs_a_write_on_the_run_in_charge_after_it(caplog):
    # given an onboarding with no run in charge
    onboarding = make_tenant().onboarding
    run_id = uuid.uuid4()
    # when a write for "no run" logs
    onboarding_write(onboarding.pk, run_id=None, change=lambda ob, steps: steps, log="plain", log_level="warning")
    # then its log line belongs to no run
    line = StepLog.objects.filter(onboarding=onboarding).last()
    assert (line.message, line.run_id, line.level, line.attempt) == ("plain", None, "warning", 0)
    record = next(r for r in caplog.records if r.getMessage() == "plain")
    assert record.levelname == "WARNING" and not record.run_id
    # and a write that starts a run logs on it
    onboarding_write(
        onboarding.pk,
        run_id=ANY_RUN,
        change=lambda ob, steps: setattr(ob, "run_id", run_id) or steps,
        log="started",
        log_attempt=3,
    )
    line = StepLog.objects.filter(onboarding=onboarding).last()
    assert (line.run_id, line.attempt, line.level) == (run_id, 3, "info")
    assert next(r for r in caplog.records if r.getMessage() == "started").run_id == str(run_id)


@pytest.mark.django_db
def test_the_changes_result_and_log_come_back_from_the_writer():
    onboarding = make_tenant().onboarding
    written, result = onboarding_write(
        onboarding.pk, run_id=ANY_RUN, change=lambda ob, steps: Changed(steps, result=42, log="decided"), log="default"
    )
    assert result == 42 and written.pk == onboarding.pk
    assert StepLog.objects.filter(onboarding=onboarding).last().message == "decided"


@pytest.mark.django_db
def test_step_log_row_writes_a_line_on_the_run_in_charge():
    onboarding = make_tenant().onboarding
    run_id = start_a_run(onboarding)
    onboarding.refresh_from_db()
    step_log_row(onboarding, STEP_NAMES[2], 4, "a line", StepLog.Level.WARNING)
    line = StepLog.objects.filter(onboarding=onboarding).last()
    assert (line.run_id, line.step, line.attempt, line.message, line.level) == (
        run_id,
        STEP_NAMES[2],
        4,
        "a line",
        "warning",
    )


def test_timestamps_are_utc_with_a_z():
    stamp = now_iso()
    assert stamp.endswith("Z") and "+00:00" not in stamp
