"""The core's defences against a step delivered twice and a database that drops its sessions, on PostgreSQL:
the step lease, attempt fencing, the attempt log written with the attempt count, the reconnecting writer."""

from __future__ import annotations

import threading

import psycopg2
import pytest
from django.db import connection

from provisioning import execution, runs
from provisioning.execution import step_execute
from provisioning.locks import step_lease
from provisioning.models import ProvisioningRun, StepLog
from provisioning.runs import onboarding_start
from provisioning.state import ANY_RUN, onboarding_write
from provisioning.steps import STEP_NAMES
from tests.support import workers
from tests.support.factories import make_tenant
from tests.support.faultkit import assert_attempts_add_up

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def run(monkeypatch):
    """A committed run whose messages go nowhere: the test delivers its steps by hand."""
    monkeypatch.setattr(
        runs,
        "run_enqueue",
        lambda *, run_id: ProvisioningRun.objects.filter(pk=run_id).update(enqueued_at="2026-01-01T00:00Z"),
    )
    tenant = make_tenant()
    return onboarding_start(onboarding=tenant.onboarding)


def deliver(run, step_name):
    return step_execute(
        onboarding_id=run.onboarding_id, run_id=str(run.id), step_name=step_name, retries=0, max_retries=3
    )


def test_a_second_delivery_while_the_first_runs_is_dropped(run, settings):
    # given another worker holding step 0's lease (running it)
    settings.STEP_LEASE_WAIT = 0.3
    held, release = threading.Event(), threading.Event()

    def first_delivery():
        with step_lease(run.id, STEP_NAMES[0]):
            held.set()
            release.wait(20)
        connection.close()

    thread = threading.Thread(target=first_delivery)
    thread.start()
    held.wait(10)
    try:
        # when the same step is delivered again
        outcome = deliver(run, STEP_NAMES[0])
    finally:
        release.set()
        thread.join()
    # then the copy stops without touching the step
    assert outcome.kind == "duplicate"
    run.onboarding.refresh_from_db()
    assert run.onboarding.provisioning_steps[STEP_NAMES[0]]["attempts"] == 0
    assert StepLog.objects.filter(onboarding_id=run.onboarding_id, message__contains="second delivery").count() == 1


def test_a_redelivered_step_logs_the_lost_attempt_and_a_late_result_of_it_is_not_recorded(run, monkeypatch):
    # given attempt 1 of step 0 began and its worker was lost
    class Died(BaseException):
        pass

    def dies(step, ctx):
        raise Died()

    with monkeypatch.context() as m:
        m.setattr(execution, "execute", dies)
        with pytest.raises(Died):
            deliver(run, STEP_NAMES[0])
    # when the message is delivered again
    assert deliver(run, STEP_NAMES[0]).kind == "done"
    # then attempt 1 is logged as interrupted, attempt 2 completed, and they add up
    onboarding = run.onboarding
    onboarding.refresh_from_db()
    assert onboarding.provisioning_steps[STEP_NAMES[0]]["attempts"] == 2
    assert StepLog.objects.filter(onboarding=onboarding, attempt=1, message__contains="interrupted").count() == 1
    assert_attempts_add_up(onboarding)
    # and a late result of attempt 1 (its worker was not dead after all) is not recorded
    before = onboarding.version
    late = execution._finish(
        onboarding.pk,
        str(run.id),
        STEP_NAMES[0],
        1,
        execution.StepOutcome.FAILED,
        error={"type": "X", "message": "late", "engine_status": None},
    )
    assert late.kind == "stale"
    onboarding.refresh_from_db()
    assert onboarding.version == before and onboarding.provisioning_steps[STEP_NAMES[0]]["status"] == "completed"


def test_a_delivery_of_a_step_done_in_this_run_does_nothing_but_go_on(run):
    # given step 0 completed in this run
    assert deliver(run, STEP_NAMES[0]).kind == "done"
    run.onboarding.refresh_from_db()
    before = run.onboarding.provisioning_steps
    # when it is delivered again (a chain continued twice)
    outcome = deliver(run, STEP_NAMES[0])
    # then
    assert (outcome.kind, outcome.message) == ("done", "already completed in this run")
    run.onboarding.refresh_from_db()
    assert run.onboarding.provisioning_steps == before
    assert_attempts_add_up(run.onboarding)


def test_a_write_survives_its_session_being_terminated(run):
    # given the process's database session is terminated by the server (pg_terminate_backend)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        pid = cursor.fetchone()[0]
    other = psycopg2.connect(workers.worker_database_url())
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [pid])
    finally:
        other.close()
    # when the one writer writes
    onboarding, _ = onboarding_write(run.onboarding_id, run_id=ANY_RUN, change=lambda ob, steps: steps, log="after")
    # then it reconnected and the write is there
    assert onboarding.version >= 2
    assert StepLog.objects.filter(onboarding_id=run.onboarding_id, message="after").count() == 1


def test_a_delivery_of_an_optional_step_skipped_in_this_run_does_not_run_it_again(run):
    # given steps 0-5 completed and the optional step 6 skipped after a permanent engine refusal
    from provisioning.models import SandboxFault

    SandboxFault.objects.create(
        tenant_id=run.onboarding.tenant_id, step=STEP_NAMES[6], kind=SandboxFault.Kind.PERMANENT, remaining=5
    )
    for name in STEP_NAMES[:6]:
        assert deliver(run, name).kind == "done"
    assert deliver(run, STEP_NAMES[6]).kind == "skipped"
    # when step 6 is delivered again in the same run
    outcome = deliver(run, STEP_NAMES[6])
    # then it is not run again: the chain just goes on
    assert outcome.kind == "done"
    run.onboarding.refresh_from_db()
    entry = run.onboarding.provisioning_steps[STEP_NAMES[6]]
    assert (entry["status"], entry["attempts"]) == ("skipped", 1)
