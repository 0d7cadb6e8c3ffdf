"""A fleet of tenants started at once into one Frappe-compatible engine, through two real worker processes.

The test server models ERPNext's concurrent company race (two creates at once: one fails with 417) and its cost
(a create is slow, slower beside others). Without engine capacity the race shows; with it, every tenant completes,
the engine never has more than ``max_concurrency`` steps in flight, and company creates never overlap.
"""

from __future__ import annotations

import pytest

from provisioning.models import OnboardingStatus, StepLog
from provisioning.services import onboarding_start
from provisioning.steps import STEP_NAMES
from tenants.models import EngineConnection
from tests.support.factories import make_tenant
from tests.support.frappe_server import FrappeTestServer
from tests.support.workers import ROOT, WorkerProcess, wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

#: a company create's cost alone, scaled down from the real ~2.5 s so that CI stays quick.
COMPANY_LATENCY = 0.15
#: how an attempt's end reads in the step log (``provisioning.services``).
ENDS = ("completed", "failed", "transient error", "optional step skipped")


@pytest.fixture
def racy_frappe():
    server = FrappeTestServer(company_latency=COMPANY_LATENCY).start()
    yield server
    server.stop()


def engine_for_server(server, *, max_concurrency: int) -> EngineConnection:
    return EngineConnection.objects.create(
        name="fleet",
        kind=EngineConnection.Kind.ERPNEXT,
        base_url=server.url,
        api_key=server.api_key,
        api_secret=server.api_secret,
        connect_timeout=2,
        read_timeout=30,
        max_concurrency=max_concurrency,
    )


@pytest.fixture
def two_workers(worker_queue, request):
    """Two worker processes of three pool processes each; ``env`` comes from the test's ``worker_env`` mark."""
    mark = request.node.get_closest_marker("worker_env")
    env = {"LOG_LEVEL": "WARNING", **(mark.args[0] if mark else {})}
    workers = [
        WorkerProcess(
            worker_queue, concurrency=3, env=env, log_path=ROOT / "var" / "test-logs" / f"fleet-{worker_queue}-{i}.log"
        )
        for i in range(2)
    ]
    try:
        for worker in workers:
            worker.start()
        yield workers
    finally:
        for worker in workers:
            worker.stop()


def start_fleet(engine, count: int):
    tenants = [make_tenant(engine=engine) for _ in range(count)]
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    return tenants


def attempt_intervals(onboardings) -> list[tuple]:
    """(start, end) of every step attempt, from the step log: each attempt's first line is written once it holds its
    engine slot, and its last before it gives the slot back."""
    begun, intervals = {}, []
    lines = StepLog.objects.filter(onboarding__in=onboardings, attempt__gt=0).order_by("created_at", "id")
    for line in lines.values("onboarding_id", "step", "attempt", "message", "created_at"):
        key = (line["onboarding_id"], line["step"], line["attempt"])
        if line["message"].startswith("attempt ") and line["message"].endswith(" started"):
            begun[key] = line["created_at"]
        elif line["message"].startswith(ENDS) and key in begun:
            intervals.append((begun.pop(key), line["created_at"]))
    assert not begun, f"attempts that never ended: {begun}"
    return intervals


def most_at_once(intervals) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, delta in events:  # an end sorts before a start at the same instant
        now += delta
        peak = max(peak, now)
    return peak


@pytest.mark.worker_env({"MORAN_ENGINE_CAPACITY": "0"})
def test_without_engine_capacity_concurrent_company_creates_race(racy_frappe, two_workers):
    # given an engine with no capacity control, and eight tenants started at once
    engine = engine_for_server(racy_frappe, max_concurrency=4)
    tenants = start_fleet(engine, 8)
    # when
    for tenant in tenants:
        wait_for_status(tenant.onboarding, {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL}, timeout=180)
    # then the engine refused some company creates with the recorded 417 ...
    refused = racy_frappe.writes("POST", "Company", status=417)
    assert refused, "no company create lost the race"
    assert all(r.body["exc_type"] == "LinkValidationError" for r in refused)
    # ... which were retried as transient, never a permanent failure: every tenant completed all the same
    assert {t.onboarding.status for t in tenants} == {OnboardingStatus.COMPLETED}
    retried = [t for t in tenants if t.onboarding.provisioning_steps["step_1_company"]["attempts"] > 1]
    assert retried


# One retry at most: a step that waited for capacity more often than that must still run (waiting is no retry).
@pytest.mark.worker_env({"MORAN_STEP_MAX_RETRIES": "1"})
def test_with_engine_capacity_thirty_tenants_complete_within_the_engines_limits(racy_frappe, two_workers):
    # given an engine that takes three steps at once, and thirty tenants started at once
    engine = engine_for_server(racy_frappe, max_concurrency=3)
    tenants = start_fleet(engine, 30)
    # when
    for tenant in tenants:
        wait_for_status(tenant.onboarding, {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL}, timeout=300)
    onboardings = [t.onboarding for t in tenants]
    # then every tenant completed, each step in one attempt: waiting for a slot used none
    assert {o.status for o in onboardings} == {OnboardingStatus.COMPLETED}
    assert {o.provisioning_steps[name]["attempts"] for o in onboardings for name in STEP_NAMES} == {1}
    assert StepLog.objects.filter(onboarding__in=onboardings, message__startswith="waiting for").exists()
    # and the engine never had more than three steps in flight (and did have several)
    peak = most_at_once(attempt_intervals(onboardings))
    assert 1 < peak <= 3
    # and company creates never overlapped, so none was refused
    creates = sorted(racy_frappe.writes("POST", "Company", status=None), key=lambda r: r.started)
    assert [r.status for r in creates] == [200] * 30
    assert all(later.started >= earlier.ended for earlier, later in zip(creates, creates[1:], strict=False))
