"""The fleet benchmark's scenario (run it with ``benchmarks/fleet.py N``; not collected by the test suite).

N tenants started at once into the Frappe-compatible test server answering with the recorded site's latencies (a
company create 2.5 s alone, slower beside others, and the concurrent-create race), through two real worker processes
of four pool processes each, with the production retry settings: once with engine capacity (the engine's default
``max_concurrency``), once without. Prints, for each, tenants per minute, failures, the 417s the engine answered,
and the ratio of the wall time to the engine-bound limit: the company creates one after another, plus the rest of
one tenant's chain (both measured on one tenant provisioned alone).
"""

from __future__ import annotations

import os
import time
from collections import Counter

import pytest
from django.utils import timezone

from provisioning.models import Onboarding, OnboardingStatus
from provisioning.services import onboarding_start
from tenants.models import EngineConnection
from tests.support.factories import make_tenant
from tests.support.frappe_server import FrappeTestServer
from tests.support.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

TENANTS = int(os.environ.get("MORAN_FLEET_TENANTS", "50"))
#: 1 = the recorded latencies; less for a quicker rehearsal of the benchmark itself.
SCALE = float(os.environ.get("MORAN_FLEET_SCALE", "1"))
COMPANY_LATENCY = 2.5 * SCALE
#: production retry settings (the test workers' defaults are faster).
RETRIES = {"MORAN_STEP_RETRY_BACKOFF": "2", "MORAN_STEP_RETRY_BACKOFF_MAX": "60", "LOG_LEVEL": "WARNING"}
FINAL = {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED}


def workers_for(queue: str, *, capped: bool) -> list[WorkerProcess]:
    env = {**RETRIES, "MORAN_ENGINE_CAPACITY": "1" if capped else "0"}
    return [
        WorkerProcess(queue, concurrency=4, env=env, log_path=ROOT / "var" / "test-logs" / f"fleet-bench-{i}.log")
        for i in range(2)
    ]


def engine_for(server: FrappeTestServer, name: str) -> EngineConnection:
    return EngineConnection.objects.create(
        name=name,
        kind=EngineConnection.Kind.ERPNEXT,
        base_url=server.url,
        api_key=server.api_key,
        api_secret=server.api_secret,
        read_timeout=300,
    )


def provision(engine, count: int, deadline: float) -> tuple[list[Onboarding], float]:
    """Start ``count`` tenants at once; wait until each ends (or the deadline). Returns them and the wall time from
    the first start to the last end."""
    tenants = [make_tenant(engine=engine) for _ in range(count)]
    began = timezone.now()
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    ids = [t.onboarding.pk for t in tenants]
    until = time.monotonic() + deadline
    while time.monotonic() < until:
        if Onboarding.objects.filter(pk__in=ids, status__in=FINAL, run_id__isnull=True).count() == count:
            break
        time.sleep(0.5)
    onboardings = list(Onboarding.objects.filter(pk__in=ids))
    ends = [o.finished_at for o in onboardings if o.status in FINAL and o.finished_at]
    wall = (max(ends) - began).total_seconds() if len(ends) == count else deadline
    return onboardings, wall


def run_mode(queue: str, *, capped: bool, limit_box: dict) -> dict:
    server = FrappeTestServer(company_latency=COMPANY_LATENCY, recorded_latency=SCALE).start()
    workers = workers_for(queue, capped=capped)
    try:
        for worker in workers:
            worker.start()
        engine = engine_for(server, "capped" if capped else "uncapped")
        if "limit" not in limit_box:
            # One tenant alone: its company create, and the rest of its chain (after a first one that warms up
            # every pool process's database connection and engine session).
            provision(engine, 1, deadline=120)
            server.requests.clear()
            (alone,), single = provision(engine, 1, deadline=120)
            create = server.writes("POST", "Company")[0]
            company = create.ended - create.started
            limit_box.update(limit=TENANTS * company + (single - company), company=company, single=single)
            server.requests.clear()
        onboardings, wall = provision(engine, TENANTS, deadline=max(120.0, 3 * limit_box["limit"]))
    finally:
        for worker in workers:
            worker.stop()
        server.stop()
    completed = sum(1 for o in onboardings if o.status == OnboardingStatus.COMPLETED)
    stopped = Counter(
        (o.status, o.current_step, o.provisioning_steps.get(o.current_step or "", {}).get("status"))
        for o in onboardings
        if o.status != OnboardingStatus.COMPLETED
    )
    for (status, step, step_status), count in sorted(stopped.items(), key=str):
        print(f"FLEET {'capped' if capped else 'uncapped'} not completed: {count} {status} at {step} ({step_status})")
    return {
        "mode": "capped" if capped else "uncapped",
        "tenants": TENANTS,
        "completed": completed,
        "failures": TENANTS - completed,
        "refused_417": len(server.writes("POST", "Company", status=417)),
        "wall": wall,
        "per_minute": completed / wall * 60 if wall else 0.0,
        "ratio": wall / limit_box["limit"],
    }


def test_fleet(worker_queue):
    limit: dict = {}
    results = [
        run_mode(worker_queue, capped=True, limit_box=limit),
        run_mode(worker_queue, capped=False, limit_box=limit),
    ]
    print(
        f"\nFLEET tenants={TENANTS} scale={SCALE:g} company_create_alone={limit['company']:.2f}s "
        f"one_tenant_alone={limit['single']:.2f}s engine_bound_limit={limit['limit']:.1f}s"
    )
    for r in results:
        print(
            f"FLEET {r['mode']:>8}: wall {r['wall']:.1f}s  {r['per_minute']:.1f} tenants/min  "
            f"completed {r['completed']}/{r['tenants']}  failures {r['failures']}  "
            f"company 417s {r['refused_417']}  wall/limit {r['ratio']:.2f}"
        )
    assert results[0]["failures"] == 0
