"""Benchmark: one sweeper pass at scale — 10,000 tenants, 1,000 of them with a run in flight (each with a step
running, its lease free: the pass's worst case short of acting), nothing else on the database.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moran_bench .venv/bin/python benchmarks/sweep.py [tenants] [active]

It migrates the named PostgreSQL database and adds its rows (tenants named ``sweep-bench-…``) once; prints the
queries, the wall time and this process's CPU time of a pass (the median of five) that finds nothing to do.
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")
os.environ["LOG_LEVEL"] = "WARNING"
# The running steps were recorded when the rows were made: a pass must read and diagnose them, not resume them.
os.environ["MORAN_SWEEP_LIVENESS_GRACE"] = os.environ["MORAN_SWEEP_STEP_DEADLINE"] = str(10**9)

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from provisioning.models import Onboarding, ProvisioningRun  # noqa: E402
from provisioning.recovery import sweep  # noqa: E402
from provisioning.state import initial_steps, now_iso  # noqa: E402
from provisioning.steps import STEP_NAMES  # noqa: E402
from tenants.models import EngineConnection, Tenant  # noqa: E402


def populate(tenants: int, active: int) -> None:
    if Tenant.objects.filter(slug__startswith="sweep-bench-").exists():
        return  # made by an earlier run
    engine, _ = EngineConnection.objects.get_or_create(name="sweep-bench")
    rows = [
        Tenant(
            slug=f"sweep-bench-{i}",
            name=f"Bench {i}",
            company_name=f"Bench {i} Ltd",
            abbr=f"SB{i}",
            currency="EUR",
            country="Germany",
            admin_email=f"admin@bench-{i}.test",
            engine=engine,
        )
        for i in range(tenants)
    ]
    Tenant.objects.bulk_create(rows, batch_size=1000)
    onboardings = Onboarding.objects.bulk_create(
        [Onboarding(tenant=t, provisioning_steps=initial_steps()) for t in rows], batch_size=1000
    )
    for onboarding in onboardings[:active]:
        run = ProvisioningRun.objects.create(
            onboarding=onboarding, kind="start", start_index=0, enqueued_at=timezone.now()
        )
        steps = initial_steps()
        # A step running "now" (within the liveness grace): read, diagnosed, left alone.
        steps[STEP_NAMES[3]].update(status="running", attempts=1, started_at=now_iso(), run_id=str(run.id))
        Onboarding.objects.filter(pk=onboarding.pk).update(
            run_id=run.id, provisioning_steps=steps, status="IN_PROGRESS"
        )


def main(tenants: int, active: int) -> None:
    call_command("migrate", verbosity=0)
    populate(tenants, active)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE provisioning_onboarding")  # as autovacuum would, after the bulk insert
    times, cpu = [], []
    for _ in range(5):
        with CaptureQueriesContext(connection) as queries:
            started, started_cpu = time.perf_counter(), time.process_time()
            actions = sweep()
            times.append(time.perf_counter() - started)
            cpu.append(time.process_time() - started_cpu)
    print(
        f"SWEEP tenants: {Tenant.objects.count()}, active: {Onboarding.objects.filter(run_id__isnull=False).count()}, "
        f"actions: {len(actions)}, queries: {len(queries.captured_queries)}, "
        f"median pass: {statistics.median(times) * 1000:.0f} ms wall, {statistics.median(cpu) * 1000:.0f} ms CPU "
        f"in this process (the rest is the database and the machine's load)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenants", nargs="?", type=int, default=10_000, help="tenants (default 10,000)")
    parser.add_argument("active", nargs="?", type=int, default=1_000, help="of them with a run in flight (1,000)")
    args = parser.parse_args()
    if not 0 <= args.active <= args.tenants:
        parser.error("active must be between 0 and tenants")
    main(args.tenants, args.active)
