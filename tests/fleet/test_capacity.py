"""Engine slots and the company-creation lock (``provisioning.capacity``): PostgreSQL session advisory locks, so each
holder below is a thread with a database session of its own, as a worker process would be."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from provisioning import runs
from provisioning.capacity import engine_slot, engine_slots_in_use, step_mark_waiting
from provisioning.models import StepLog, StepStatus
from provisioning.recovery import diagnose
from provisioning.services import onboarding_start
from tenants.models import EngineConnection
from tests.support.factories import make_tenant
from tests.support.workers import realpath_available

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(not realpath_available(), reason="engine slots are PostgreSQL advisory locks"),
]


class Holder:
    """Holds what ``engine_slot`` grants in a session of its own, until ``release()`` (or ``die()``: the session
    ends without giving anything back, as a killed worker's would)."""

    def __init__(self, onboarding_id: int, step_name: str):
        self.granted = threading.Event()
        self.done = threading.Event()
        self.held = None
        self._die = False
        self.thread = threading.Thread(target=self._run, args=(onboarding_id, step_name))
        self.thread.start()
        self.granted.wait(10)

    def _run(self, onboarding_id, step_name):
        try:
            if self._die_now_or_hold(onboarding_id, step_name):
                return
        finally:
            connection.close()

    def _die_now_or_hold(self, onboarding_id, step_name) -> bool:
        context = engine_slot(onboarding_id=onboarding_id, step_name=step_name, wait=0)
        grant = context.__enter__()
        self.held = grant.held
        self.granted.set()
        self.done.wait(10)
        if self._die:
            return True  # never leaves the context: the session's end frees the locks
        context.__exit__(None, None, None)
        return False

    def release(self):
        self.done.set()
        self.thread.join(10)

    def die(self):
        self._die = True
        self.release()


@pytest.fixture
def engine():
    return EngineConnection.objects.create(name="capped", kind=EngineConnection.Kind.SANDBOX, max_concurrency=2)


@pytest.fixture
def onboardings(engine):
    return [make_tenant(engine=engine).onboarding for _ in range(4)]


def test_it_grants_at_most_max_concurrency_slots_across_sessions(engine, onboardings):
    # given two steps of the engine in flight, in two other sessions
    holders = [Holder(onboardings[i].pk, "step_4_cost_centers") for i in range(2)]
    assert [h.held for h in holders] == [True, True]
    assert engine_slots_in_use([engine]) == {engine.pk: 2}
    try:
        # when a third step asks for a slot
        with engine_slot(onboarding_id=onboardings[2].pk, step_name="step_5_warehouses", wait=0.2) as grant:
            # then it must wait, and says why
            assert not grant.held
            assert grant.reason == "waiting for engine capacity (2 of 2 slots in use)"
    finally:
        for holder in holders:
            holder.release()
    # and once they are given back, a slot is free again
    assert engine_slots_in_use([engine]) == {engine.pk: 0}
    with engine_slot(onboarding_id=onboardings[2].pk, step_name="step_5_warehouses", wait=0) as grant:
        assert grant.held
        assert engine_slots_in_use([engine]) == {engine.pk: 1}


def test_it_lets_one_company_creation_run_at_a_time_per_engine(engine, onboardings):
    # given a tenant creating its company
    holder = Holder(onboardings[0].pk, "step_1_company")
    assert holder.held
    try:
        # when another tenant's company step asks, while a slot is still free
        with engine_slot(onboarding_id=onboardings[1].pk, step_name="step_1_company", wait=0.2) as grant:
            # then it waits for the company creation, not for a slot
            assert not grant.held
            assert "company creation" in grant.reason
        # and a step that creates no company runs beside it
        with engine_slot(onboarding_id=onboardings[1].pk, step_name="step_2_fiscal_year", wait=0) as grant:
            assert grant.held
    finally:
        holder.release()


def test_a_dead_workers_slot_is_free_at_once(engine, onboardings):
    # given both slots taken, one by a session that ends without giving its slot back
    holders = [Holder(onboardings[0].pk, "step_1_company"), Holder(onboardings[1].pk, "step_3_chart_of_accounts")]
    try:
        # when
        holders[0].die()
        # then its slot and its company lock are free
        with engine_slot(onboarding_id=onboardings[2].pk, step_name="step_1_company", wait=1) as grant:
            assert grant.held
    finally:
        holders[1].release()


def test_it_counts_slots_per_engine_and_says_nothing_for_other_locks(engine, onboardings):
    # given
    other = EngineConnection.objects.create(name="other", kind=EngineConnection.Kind.SANDBOX, max_concurrency=3)
    holder = Holder(onboardings[0].pk, "step_1_company")  # a slot and the company lock of "capped"
    try:
        # when / then: the company lock is not a slot
        assert engine_slots_in_use([engine, other]) == {engine.pk: 1, other.pk: 0}
    finally:
        holder.release()


def test_it_records_a_step_waiting_for_capacity_once_and_the_sweeper_waits_for_it(monkeypatch, engine, onboardings):
    # given a run in charge (its chain is not sent: no worker here)
    monkeypatch.setattr(runs, "run_enqueue", lambda **kw: True)
    onboarding = onboardings[0]
    run = onboarding_start(onboarding=onboarding)
    # when its first step is turned away twice
    for _ in range(2):
        step_mark_waiting(
            onboarding_id=onboarding.pk, run_id=run.id, step_name="step_0_engine_check", reason="waiting for engine"
        )
    # then it shows as waiting (never running), with no attempt used and one log line
    onboarding.refresh_from_db()
    entry = onboarding.provisioning_steps["step_0_engine_check"]
    assert (entry["status"], entry["attempts"], entry["started_at"]) == (StepStatus.WAITING, 0, None)
    assert (onboarding.status, onboarding.current_step) == ("IN_PROGRESS", "step_0_engine_check")
    assert StepLog.objects.filter(onboarding=onboarding, message="waiting for engine").count() == 1
    # and the sweeper leaves it alone within the step deadline, like a retry, and resumes it past the deadline
    run.refresh_from_db()
    assert diagnose(onboarding, run, now=timezone.now()) is None
    later = timezone.now() + dt.timedelta(seconds=3600 * 24)
    problem = diagnose(onboarding, run, now=later)
    assert (problem.kind, problem.step) == ("stuck", "step_0_engine_check")
    assert "waiting for engine capacity" in problem.detail


def test_the_engine_pages_show_the_capacity_and_the_slots_in_use(admin_client, engine, onboardings):
    # given one step of the engine in flight
    holder = Holder(onboardings[0].pk, "step_4_cost_centers")
    try:
        # when
        listing = admin_client.get(reverse("admin:tenants_engineconnection_changelist"))
        page = admin_client.get(reverse("admin:tenants_engineconnection_change", args=[engine.pk]))
    finally:
        holder.release()
    # then
    assert "1 of 2" in listing.content.decode()
    assert "1 of 2" in page.content.decode()
    assert 'name="max_concurrency"' in page.content.decode()


def test_the_capacity_is_edited_in_the_admin(admin_client, engine):
    # when
    response = admin_client.post(
        reverse("admin:tenants_engineconnection_change", args=[engine.pk]),
        {
            "name": engine.name,
            "kind": engine.kind,
            "base_url": "",
            "api_key": "",
            "connect_timeout": 5,
            "read_timeout": 60,
            "max_concurrency": 6,
        },
    )
    # then
    assert response.status_code == 302
    engine.refresh_from_db()
    assert engine.max_concurrency == 6


def test_it_gives_the_company_lock_back_once_the_create_returns(engine, onboardings):
    # given a company step holding its slot and the company-creation lock
    from provisioning.engines import engine_for

    with engine_slot(onboarding_id=onboardings[0].pk, step_name="step_1_company", wait=0) as grant:
        assert grant.held
        waiting = Holder(onboardings[1].pk, "step_1_company")
        waiting.release()
        assert not waiting.held
        # when its engine's Company create returns
        engine_for(engine).insert(
            "Company", {"company_name": "Early Ltd", "abbr": "EL", "default_currency": "EUR", "country": "Germany"}
        )
        # then the next company step may begin while this one still holds its slot (to look again)
        assert engine_slots_in_use([engine]) == {engine.pk: 1}
        following = Holder(onboardings[1].pk, "step_1_company")
        following.release()
        assert following.held


def test_a_blank_capacity_in_the_admin_keeps_the_current_one(admin_client, engine):
    # when the form is saved without the field
    response = admin_client.post(
        reverse("admin:tenants_engineconnection_change", args=[engine.pk]),
        {"name": engine.name, "kind": engine.kind, "connect_timeout": 5, "read_timeout": 60},
    )
    # then
    assert response.status_code == 302
    engine.refresh_from_db()
    assert engine.max_concurrency == 2
