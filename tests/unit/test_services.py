"""start / continue / retry / cancel and step execution, with tasks executed in-process (the embedded mode)."""

import pytest

from moran.errors import NoActiveRun, NothingToContinue, RunActive
from provisioning.execution import step_execute
from provisioning.models import Onboarding, ProvisioningRun, SandboxDocument, SandboxFault, StepLog
from provisioning.runs import onboarding_cancel, onboarding_continue, onboarding_retry, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_retries(settings, eager):
    settings.STEP_RETRY_BACKOFF = 0.01
    settings.STEP_RETRY_BACKOFF_MAX = 0.05


def attempts(onboarding):
    onboarding.refresh_from_db()
    return {name: onboarding.provisioning_steps[name]["attempts"] for name in STEP_NAMES}


def engine_docs():
    return sorted(SandboxDocument.objects.values_list("doctype", "name"))


def test_start_runs_every_step_to_completed(on_commit):
    tenant = make_tenant()
    run = on_commit(onboarding_start, onboarding=tenant.onboarding, requested_by="op")
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (onboarding.status, onboarding.steps_completed, onboarding.progress) == ("COMPLETED", 10, 100)
    assert onboarding.run_id is None and onboarding.finished_at is not None
    run.refresh_from_db()
    assert (run.kind, run.outcome, run.enqueued_at is not None) == ("start", "completed", True)
    tenant.refresh_from_db()
    assert tenant.status == "active"


def test_a_failed_step_leaves_partial_and_continue_resumes_without_rerunning_earlier_steps(on_commit):
    # given: step 4 fails once, permanently
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind="permanent")
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (onboarding.status, onboarding.steps_completed, onboarding.current_step) == (
        "PARTIAL",
        4,
        "step_4_cost_centers",
    )
    failed = onboarding.provisioning_steps["step_4_cost_centers"]
    assert failed["status"] == "failed" and failed["error"]["engine_status"] == 417
    assert onboarding.provisioning_steps["step_5_warehouses"]["status"] == "pending"  # the chain stopped
    before = attempts(onboarding)

    # when
    run = on_commit(onboarding_continue, onboarding=onboarding)

    # then
    after = attempts(onboarding)
    assert run.start_index == 4
    assert onboarding.status == "COMPLETED"
    assert [after[n] for n in STEP_NAMES[:4]] == [before[n] for n in STEP_NAMES[:4]]
    assert after["step_4_cost_centers"] == 2


def test_retry_runs_every_step_again_without_duplicating_anything_in_the_engine(on_commit):
    tenant = make_tenant()
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    docs = engine_docs()
    on_commit(onboarding_retry, onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert onboarding.status == "COMPLETED"
    assert set(attempts(onboarding).values()) == {2}
    assert engine_docs() == docs


def test_continue_and_retry_are_refused_while_a_run_is_active():
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)  # not committed: nothing executes, the run stays active
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).run_id == run.id
    with pytest.raises(RunActive):
        onboarding_continue(onboarding=tenant.onboarding)
    with pytest.raises(RunActive):
        onboarding_retry(onboarding=tenant.onboarding)
    assert ProvisioningRun.objects.filter(onboarding=tenant.onboarding).count() == 1


def test_there_is_nothing_to_continue_when_everything_is_completed(on_commit):
    tenant = make_tenant()
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    with pytest.raises(NothingToContinue):
        onboarding_continue(onboarding=tenant.onboarding)
    with pytest.raises(NoActiveRun):
        onboarding_cancel(onboarding=tenant.onboarding)


def test_transient_errors_are_retried_counted_and_logged(on_commit):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_3_chart_of_accounts", kind="transient", remaining=2)
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert onboarding.status == "COMPLETED"
    assert onboarding.provisioning_steps["step_3_chart_of_accounts"]["attempts"] == 3
    lines = list(
        StepLog.objects.filter(onboarding=onboarding, step="step_3_chart_of_accounts").values_list("attempt", "level")
    )
    assert lines.count((1, "warning")) == 1 and lines.count((2, "warning")) == 1 and (3, "info") in lines


def test_a_step_fails_after_the_maximum_of_transient_retries(on_commit, settings):
    settings.STEP_MAX_RETRIES = 2
    from provisioning.tasks import STEP_TASKS

    for task in STEP_TASKS.values():
        task.max_retries = 2
    try:
        tenant = make_tenant()
        SandboxFault.objects.create(tenant=tenant, step="step_1_company", kind="transient", remaining=50)
        on_commit(onboarding_start, onboarding=tenant.onboarding)
    finally:
        for task in STEP_TASKS.values():
            task.max_retries = 5
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    step = onboarding.provisioning_steps["step_1_company"]
    assert (onboarding.status, step["status"], step["attempts"]) == ("PARTIAL", "failed", 3)
    assert step["error"]["message"].startswith("gave up after 3 attempts")
    assert not SandboxDocument.objects.filter(doctype="Company", name=tenant.company_name).exists()


def test_an_optional_step_that_fails_is_skipped_and_the_run_goes_on(on_commit):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_6_master_data", kind="permanent")
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (onboarding.status, onboarding.steps_completed, onboarding.progress) == ("COMPLETED", 9, 100)
    assert onboarding.provisioning_steps["step_6_master_data"]["status"] == "skipped"
    assert onboarding.provisioning_steps["step_6_master_data"]["error"]["type"] == "ValidationError"


def test_engine_check_failure_leaves_failed_with_the_reason(on_commit):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_0_engine_check", kind="permanent")
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (onboarding.status, onboarding.steps_completed) == ("FAILED", 0)
    assert onboarding.provisioning_steps["step_0_engine_check"]["error"]["message"]


def test_cancel_stops_the_run_and_continue_resumes_it(on_commit):
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)  # claimed, never sent (no commit here)
    cancelled = onboarding_cancel(onboarding=tenant.onboarding, requested_by="op")
    assert (cancelled.status, cancelled.run_id) == ("CANCELLED", None)
    on_commit(onboarding_continue, onboarding=tenant.onboarding)
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).status == "COMPLETED"


def test_a_task_of_an_older_run_changes_nothing(on_commit):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind="permanent")
    first = on_commit(onboarding_start, onboarding=tenant.onboarding)
    on_commit(onboarding_continue, onboarding=tenant.onboarding)
    before = Onboarding.objects.get(pk=tenant.onboarding.pk)
    docs = engine_docs()

    outcome = step_execute(
        onboarding_id=before.pk, run_id=str(first.id), step_name="step_4_cost_centers", retries=0, max_retries=5
    )

    after = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert outcome.kind == "stale"
    assert (after.version, after.provisioning_steps) == (before.version, before.provisioning_steps)
    assert engine_docs() == docs


def test_a_redelivered_step_that_already_completed_in_its_run_does_nothing():
    tenant = make_tenant()
    run = onboarding_start(onboarding=tenant.onboarding)
    first = step_execute(
        onboarding_id=tenant.onboarding.pk,
        run_id=str(run.id),
        step_name="step_0_engine_check",
        retries=0,
        max_retries=5,
    )
    again = step_execute(
        onboarding_id=tenant.onboarding.pk,
        run_id=str(run.id),
        step_name="step_0_engine_check",
        retries=0,
        max_retries=5,
    )
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    assert (first.kind, again.kind) == ("done", "done")
    assert onboarding.provisioning_steps["step_0_engine_check"]["attempts"] == 1


def test_a_new_onboarding_is_pending_with_step_0_as_its_current_step():
    onboarding = make_tenant().onboarding
    assert (onboarding.status, onboarding.current_step, onboarding.steps_completed, onboarding.progress) == (
        "PENDING",
        "step_0_engine_check",
        0,
        0,
    )
