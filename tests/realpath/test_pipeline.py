"""The real path: PostgreSQL, the broker and a real Celery worker process started by the test session."""

import json
import time

import pytest
from django.db import connection

from provisioning.models import OnboardingStatus, SandboxDocument, SandboxFault, StepLog
from provisioning.services import onboarding_continue, onboarding_retry, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.workers import wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


def engine_docs(site="sandbox"):
    return {(d, n) for d, n in SandboxDocument.objects.filter(site=site).values_list("doctype", "name")}


def test_it_provisions_a_tenant_to_completed(worker):
    # given
    tenant = make_tenant()
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    assert (onboarding.steps_completed, onboarding.progress, onboarding.current_step) == (10, 100, None)
    assert all(onboarding.provisioning_steps[name]["attempts"] == 1 for name in STEP_NAMES)
    assert ("Company", tenant.company_name) in engine_docs()
    assert ("Cost Center", f"Operations - {tenant.abbr}") in engine_docs()
    tenant.refresh_from_db()
    assert tenant.status == "active"


def attempts_of(onboarding):
    onboarding.refresh_from_db()
    return {name: onboarding.provisioning_steps[name]["attempts"] for name in STEP_NAMES}


def test_it_ends_partial_on_a_failed_step_and_continue_completes_without_rerunning(worker):
    # given
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind="permanent")
    onboarding_start(onboarding=tenant.onboarding)
    onboarding = wait_for_status(tenant.onboarding, {OnboardingStatus.PARTIAL, OnboardingStatus.COMPLETED})
    assert (onboarding.status, onboarding.steps_completed) == ("PARTIAL", 4)
    assert onboarding.provisioning_steps["step_4_cost_centers"]["error"]["type"] == "ValidationError"
    before = attempts_of(onboarding)
    # when
    onboarding_continue(onboarding=onboarding)
    # then
    onboarding = wait_for_status(onboarding, OnboardingStatus.COMPLETED)
    after = attempts_of(onboarding)
    assert [after[n] for n in STEP_NAMES[:4]] == [before[n] for n in STEP_NAMES[:4]] == [1, 1, 1, 1]
    assert after["step_4_cost_centers"] == 2


def test_retry_on_a_completed_tenant_runs_all_steps_and_duplicates_nothing(worker):
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    docs = sorted(SandboxDocument.objects.values_list("doctype", "name"))
    permissions = SandboxDocument.objects.filter(doctype="User Permission").count()

    onboarding_retry(onboarding=tenant.onboarding)
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=90)

    assert set(attempts_of(onboarding).values()) == {2}
    assert sorted(SandboxDocument.objects.values_list("doctype", "name")) == docs
    assert SandboxDocument.objects.filter(doctype="User Permission").count() == permissions == 1


def test_a_fresh_read_from_another_connection_shows_every_step_and_a_stale_save_erases_nothing(worker):
    """The seeds' bug as a regression test: the web process reads the onboarding, a worker writes step states, the
    web process saves its stale copy. Every step's state must survive, seen from a brand-new connection."""
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, kind="latency", latency_ms=20)
    stale = type(tenant.onboarding).objects.get(pk=tenant.onboarding.pk)  # read before the run, as a web view would
    onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=90)

    stale.save()  # a careless read-and-save in another process

    import psycopg2  # a brand-new connection, outside Django: what another process would see

    db = connection.settings_dict
    fresh = psycopg2.connect(
        dbname=db["NAME"],
        user=db["USER"] or "postgres",
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        password=db["PASSWORD"] or None,
    )
    try:
        with fresh.cursor() as cursor:
            cursor.execute(
                "SELECT status, steps_completed, progress, provisioning_steps FROM provisioning_onboarding WHERE id = %s",
                [tenant.onboarding.pk],
            )
            status, completed, progress, steps = cursor.fetchone()
    finally:
        fresh.close()
    steps = json.loads(steps) if isinstance(steps, str) else steps
    assert (status, completed, progress) == ("COMPLETED", 10, 100)
    assert {name: steps[name]["status"] for name in STEP_NAMES} == dict.fromkeys(STEP_NAMES, "completed")
    assert StepLog.objects.filter(onboarding=tenant.onboarding, message__startswith="completed").count() == 10


def test_a_late_task_of_an_older_run_changes_nothing(worker):
    # given: a tenant whose first run failed at step 4, then a second run completed it
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind="permanent")
    first = onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.PARTIAL)
    onboarding_continue(onboarding=tenant.onboarding)
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    version, steps = onboarding.version, onboarding.provisioning_steps
    docs = sorted(SandboxDocument.objects.values_list("doctype", "name"))
    # when: a message of the first run arrives late (a redelivery, a slow queue)
    from provisioning.tasks import STEP_TASKS

    result = STEP_TASKS["step_4_cost_centers"].apply_async(
        (onboarding.pk, str(first.id)), {"tenant": tenant.slug}, queue=worker.queue
    )
    deadline = time.monotonic() + 30
    while result.id.encode() not in worker.log_path.read_bytes() or b"ignored" not in worker.log_path.read_bytes():
        assert time.monotonic() < deadline, "the worker never handled the late task"
        time.sleep(0.2)
    # then
    onboarding.refresh_from_db()
    assert (onboarding.version, onboarding.provisioning_steps) == (version, steps)
    assert sorted(SandboxDocument.objects.values_list("doctype", "name")) == docs
