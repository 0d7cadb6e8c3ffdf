"""The soak: tenants provisioned by two worker processes while a chaos loop kills a worker every few seconds —
SIGKILL of a pool process (its message comes back at once) or of a whole worker (restarted at once; on Redis its
unacknowledged messages would come back only after the hour-long visibility timeout) — with the production defaults
and a real beat running the sweeper. At the end every onboarding is COMPLETED, every step's attempts add up with its
log lines, and the engine holds no duplicate. Prints the figures, among them the longest time any step stood
``running`` without a live worker (its lease free): how long the status lied.

``MORAN_SOAK_TENANTS`` changes the number of tenants: 200 by default (CI runs it on each broker; about half a
minute each on a quiet machine), or any number with ``benchmarks/soak.py``."""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import pytest
from django.db.models import Count, Sum

from provisioning.models import Onboarding, OnboardingStatus, ProvisioningRun, StepAttempt, StepLog
from provisioning.recovery import SWEEPER
from provisioning.services import onboarding_start
from provisioning.steps import TOTAL_STEPS
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    DeadStepWatch,
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    fault_broker,
    kill_pool_children,
    wait_all,
    worker_database_url,
)
from tests.support.workers import ROOT, BeatProcess, WorkerProcess

pytestmark = [pytest.mark.soak, pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

TENANTS = int(os.environ.get("MORAN_SOAK_TENANTS", "200"))
CHAOS_EVERY = 4.0  # seconds between two kills


class Chaos(threading.Thread):
    """Kills a worker every few seconds: a pool process, or the whole worker (restarted at once)."""

    def __init__(self, workers):
        super().__init__(daemon=True)
        self.workers = workers
        self.stop = threading.Event()
        self.children_killed = 0
        self.workers_killed = 0
        self.rng = random.Random(6)

    def run(self):
        turn = 0
        while not self.stop.wait(CHAOS_EVERY):
            worker = self.workers[turn % len(self.workers)]
            if turn % 3 == 2:
                worker.kill()
                self.workers_killed += 1
                worker.start()
            else:
                self.children_killed += kill_pool_children(worker)
            turn += 1


def most_found_interrupted(onboardings) -> int:
    """The highest number of attempts of one step that the sweeper found interrupted: how close the chaos came to
    the poison-step rule (``SWEEP_MAX_RESUMES``)."""
    counts = (
        StepAttempt.objects.filter(
            onboarding__in=onboardings,
            outcome=StepAttempt.Outcome.INTERRUPTED,
            ended_by=StepAttempt.EndedBy.SWEEPER,
        )
        .values("onboarding", "step")
        .annotate(n=Count("id"))
        .values_list("n", flat=True)
    )
    return max(counts, default=0)


def soak_figures(onboardings, *, broker_kind, chaos, watch, wall) -> dict:
    """What the soak did and found, for CI's output and ``artifacts/soak.txt``."""
    logs = StepLog.objects.filter(onboarding__in=onboardings)
    attempts = sum(
        entry["attempts"]
        for steps in onboardings.values_list("provisioning_steps", flat=True)
        for entry in steps.values()
    )
    return {
        "broker": broker_kind,
        "tenants": TENANTS,
        "steps": TENANTS * TOTAL_STEPS,
        "attempts": attempts,
        "pool processes killed": chaos.children_killed,
        "whole workers killed": chaos.workers_killed,
        "redeliveries (interrupted attempts resumed)": logs.filter(message__contains="delivered again").count(),
        "duplicate deliveries dropped": logs.filter(message__contains="second delivery").count(),
        "transient retries": logs.filter(message__startswith="transient error").count(),
        "longest step running without a live worker (s)": round(watch.longest, 1),
        "most interruptions of one step found by the sweeper": most_found_interrupted(onboardings),
        "sweeper runs": ProvisioningRun.objects.filter(onboarding__in=onboardings, requested_by=SWEEPER).count(),
        "runs": ProvisioningRun.objects.filter(onboarding__in=onboardings).count(),
        "log lines": logs.count(),
        "wall time (s)": round(wall, 1),
    }


def report(line: str, capsys) -> None:
    with capsys.disabled():  # the figures belong in CI's output, pass or fail
        print("\n" + line)
    artifacts = ROOT / "artifacts"
    artifacts.mkdir(exist_ok=True)
    with open(artifacts / "soak.txt", "a") as out:
        out.write(line + "\n")


@pytest.mark.timeout(1800)  # the suite's 600 s is for ordinary tests; the soak waits up to 1200 s for the tenants
def test_soak_two_hundred_tenants_under_chaos(settings, capsys):
    started = time.monotonic()
    server = fault_broker()
    queue = f"soak-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    env = {
        "CELERY_BROKER_URL": server.url,
        "DATABASE_URL": worker_database_url("moran-soak-worker"),
        "MORAN_STEP_MAX_RETRIES": "10",
        "LOG_LEVEL": "WARNING",
    }
    logs = ROOT / "var" / "test-logs"
    workers = [WorkerProcess(queue, env=env, log_path=logs / f"worker-{queue}-{i}.log") for i in range(2)]
    beat = BeatProcess(queue, env=env, log_path=logs / f"beat-{queue}.log")
    chaos = Chaos(workers)
    try:
        for worker in workers:
            worker.start()
        beat.start()
        with broker(server.url), DeadStepWatch() as watch:
            # given the tenants, all started at once
            tenants = [make_tenant() for _ in range(TENANTS)]
            for tenant in tenants:
                onboarding_start(onboarding=tenant.onboarding)
            # when a worker is killed every few seconds until they are all done
            chaos.start()
            wait_all([t.onboarding.pk for t in tenants], {OnboardingStatus.COMPLETED}, timeout=1200)
            chaos.stop.set()
            chaos.join(60)
    finally:
        chaos.stop.set()
        beat.kill()
        for worker in workers:
            worker.kill()
        server.close()
    wall = time.monotonic() - started

    # then every onboarding is COMPLETED and true, every attempt accounted for, nothing twice in the engine
    onboardings = Onboarding.objects.filter(tenant__in=tenants)
    assert onboardings.filter(status=OnboardingStatus.COMPLETED, steps_completed=TOTAL_STEPS).count() == TENANTS
    assert not ProvisioningRun.objects.filter(onboarding__in=onboardings, outcome="active").exists()
    for onboarding in onboardings.select_related("tenant"):
        assert_attempts_add_up(onboarding)
    for tenant in random.Random(1).sample(tenants, min(20, TENANTS)):
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []
    figures = soak_figures(onboardings, broker_kind=server.kind, chaos=chaos, watch=watch, wall=wall)
    report("SOAK " + ", ".join(f"{k}: {v}" for k, v in figures.items()), capsys)
    # a soak that ended before the chaos reached both kinds of kill did not test what it says
    assert chaos.children_killed > 0 and chaos.workers_killed > 0, figures
    assert onboardings.aggregate(n=Sum("steps_completed"))["n"] == TENANTS * TOTAL_STEPS
