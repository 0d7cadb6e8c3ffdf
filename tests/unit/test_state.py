"""The one writer of step state and the status rules of the brief."""

import threading

import pytest
from django.db import connection

from provisioning.models import Onboarding, OnboardingStatus, StepStatus
from provisioning.state import ANY_RUN, Stale, derive, initial_steps, onboarding_write
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
