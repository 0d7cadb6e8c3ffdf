"""The sweeper's pass reads every run in charge through the facts PostgreSQL computes (provisioning.recovery
``active_run_facts``): they must be what the diagnosis reads from the row itself, whatever the step states hold, and
a pass over healthy runs reads no row whole."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from provisioning import runs
from provisioning.models import Onboarding, ProvisioningRun
from provisioning.recovery import active_run_facts, active_runs, run_facts, sweep
from provisioning.runs import onboarding_start
from provisioning.state import initial_steps, now_iso
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

T0 = "2026-01-05T10:00:00Z"
T1 = "2026-01-05T10:00:01.250000Z"
T2 = "2026-01-05T10:00:02+00:00"
T3 = "2026-01-05T11:00:03.5+01:00"
#: as the writer stamps them (now_iso)
W = (
    "2026-01-05T10:00:00.000100Z",
    "2026-01-05T10:00:01.250000Z",
    "2026-01-05T10:00:02.000001Z",
    "2026-01-05T10:00:04.999999Z",
)


@pytest.fixture(autouse=True)
def lost_broker(monkeypatch):
    """Runs reach the broker (enqueued_at set), but nothing runs them."""

    def run_enqueue(*, run_id):
        ProvisioningRun.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
        return True

    monkeypatch.setattr(runs, "run_enqueue", run_enqueue)


def in_flight(shape) -> Onboarding:
    """A tenant with a run in charge whose step states ``shape(run_id)`` returns, written as they are."""
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    Onboarding.objects.filter(pk=onboarding.pk).update(provisioning_steps=shape(str(onboarding.run_id)))
    return onboarding


def entry(status, run_id=None, **fields):
    return {"status": status, "attempts": 1, "started_at": None, "finished_at": None, "run_id": run_id, **fields}


def done(upto, run_id, stamps=(T0, T1, T2, T3)):
    steps = initial_steps()
    for i, name in enumerate(STEP_NAMES[:upto]):
        steps[name] = entry("completed", run_id, started_at=stamps[i % 4], finished_at=stamps[(i + 1) % 4])
    return steps


SHAPES = {
    "nothing began": lambda run: initial_steps(),
    "running": lambda run: {**done(3, run), STEP_NAMES[3]: entry("running", run, started_at=T3)},
    "retrying": lambda run: {**done(2, run), STEP_NAMES[2]: entry("retrying", run, started_at=T1, finished_at=T2)},
    "waiting": lambda run: {**done(1, run), STEP_NAMES[1]: entry("waiting", run, started_at=T1, waiting_since=T2)},
    "idle between steps": lambda run: done(4, run, stamps=(T3, T2, T1, T0)),
    "skipped and done": lambda run: {**done(2, run), STEP_NAMES[2]: entry("skipped", run, finished_at=T2)},
    "another run's steps": lambda run: {**done(3, str(uuid.uuid4())), STEP_NAMES[3]: entry("running", run)},
    "a step of another run in flight": lambda run: {
        **done(2, run),
        STEP_NAMES[2]: entry("running", str(uuid.uuid4()), started_at=T2),
    },
    "odd values": lambda run: {
        **done(2, run),
        STEP_NAMES[2]: entry("completed", run, started_at="", finished_at="yesterday"),
        STEP_NAMES[3]: entry("running", run, started_at="soon"),
        STEP_NAMES[4]: entry(None, run, started_at=T3),
    },
    "entries missing": lambda run: {STEP_NAMES[0]: entry("completed", run, started_at=T0, finished_at=T1)},
    # the writer's own stamps (UTC, microseconds), which the database compares as strings
    "writer's stamps, running": lambda run: {
        **done(3, run, stamps=W),
        STEP_NAMES[3]: entry("running", run, started_at=W[3]),
    },
    "writer's stamps, idle between steps": lambda run: done(4, run, stamps=W[::-1]),
    "writer's stamps, the same start twice": lambda run: {
        **done(1, run, stamps=W),
        STEP_NAMES[1]: entry("completed", run, started_at=W[2], finished_at=W[2]),
        STEP_NAMES[2]: entry("retrying", run, started_at=W[2], finished_at=W[3]),
    },
    "writer's stamps and one that is not a time, greater than them": lambda run: {
        **done(2, run, stamps=W),
        STEP_NAMES[2]: entry("completed", run, started_at="2026-01-05T1x:00:00.000000Z", finished_at=W[3]),
        STEP_NAMES[3]: entry("running", run, started_at=W[3]),
    },
    "writer's stamps and an offset one, later than them": lambda run: {
        **done(3, run, stamps=W),
        STEP_NAMES[3]: entry("running", run, started_at="2026-01-05T10:30:00.000000-02:00"),
    },
    "writer's stamps and one without microseconds, the latest": lambda run: {
        **done(3, run, stamps=W),
        STEP_NAMES[3]: entry("running", run, started_at="2026-01-05T10:00:05Z"),
    },
    "same start twice": lambda run: {
        STEP_NAMES[0]: entry("completed", run, started_at=T1, finished_at=T1),
        STEP_NAMES[1]: entry("running", run, started_at=T1),
    },
}


@pytest.mark.parametrize("shape", SHAPES, ids=list(SHAPES))
def test_the_databases_facts_are_the_rows_facts(shape):
    # given a run in charge whose step states take that shape, beside an ordinary one
    in_flight(SHAPES[shape])
    in_flight(SHAPES["running"])
    # when the database computes the facts of every run in charge
    computed = active_run_facts()
    # then they are the facts the diagnosis reads from each row
    assert computed == [run_facts(onboarding, run) for onboarding, run in active_runs()]


def test_a_pass_over_healthy_runs_reads_no_row_whole(settings):
    # given runs whose steps began just now (within the liveness grace)
    for _ in range(3):
        in_flight(lambda run: {**done(2, run), STEP_NAMES[2]: entry("running", run, started_at=now_iso())})
    # when
    with CaptureQueriesContext(connection) as ctx:
        actions = sweep()
    # then: the facts and the held leases, nothing else
    assert actions == []
    assert len(ctx.captured_queries) == 2
    assert 'provisioning_steps" FROM' not in " ".join(q["sql"] for q in ctx.captured_queries)
