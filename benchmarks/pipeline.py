"""Benchmark: the pipeline's own cost per tenant and per step, on the sandbox engine, in-process.

Prints wall time per tenant, database queries per step (the writer's lock/fence/save plus the sandbox's reads), and
the ratio of a second run (retry: everything exists, nothing created) to the first. Run:

    .venv/bin/python benchmarks/pipeline.py [N]          # embedded SQLite in a temporary folder
    DATABASE_URL=postgres://postgres@127.0.0.1:5432/moran_bench .venv/bin/python benchmarks/pipeline.py [N]

It creates its own database (a temporary SQLite file, or the named PostgreSQL database, which it migrates).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.pop("CELERY_BROKER_URL", None)
if "DATABASE_URL" not in os.environ:
    os.environ["MORAN_VAR_DIR"] = tempfile.mkdtemp(prefix="moran-bench-")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")
os.environ["LOG_LEVEL"] = "WARNING"

import django  # noqa: E402

django.setup()

from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402

from provisioning.models import Onboarding  # noqa: E402
from provisioning.services import onboarding_retry, onboarding_start  # noqa: E402
from tenants.services import tenant_create  # noqa: E402


def main(n: int) -> None:
    call_command("migrate", verbosity=0)
    suffix = str(int(time.time()))[-5:]
    first, second, queries = [], [], []
    for i in range(n):
        tenant = tenant_create(
            slug=f"bench-{suffix}-{i}",
            company_name=f"Bench {suffix} {i} Ltd",
            abbr=f"B{suffix}{i}"[:10],
            currency="EUR",
            country="Germany",
            admin_email=f"admin{i}@bench.test",
            extra_cost_centers=["Operations"],
            extra_warehouses=["Returns"],
        )
        with CaptureQueriesContext(connection) as ctx:
            t0 = time.perf_counter()
            onboarding_start(onboarding=tenant.onboarding)
            first.append(time.perf_counter() - t0)
        queries.append(len(ctx.captured_queries))
        t0 = time.perf_counter()
        onboarding_retry(onboarding=tenant.onboarding)
        second.append(time.perf_counter() - t0)
        assert Onboarding.objects.get(pk=tenant.onboarding.pk).status == "COMPLETED"
    print(f"database: {connection.vendor}; tenants: {n}")
    print(
        f"first run   (creates everything): median {statistics.median(first) * 1000:.0f} ms/tenant, "
        f"max {max(first) * 1000:.0f} ms"
    )
    print(f"second run  (retry, finds all)  : median {statistics.median(second) * 1000:.0f} ms/tenant")
    print(f"ratio second/first              : {statistics.median(second) / statistics.median(first):.2f}")
    print(
        f"queries per tenant (first run)  : median {statistics.median(queries):.0f}, "
        f"{statistics.median(queries) / 10:.0f} per step"
    )
    print(f"throughput (first run, 1 process): {n / sum(first):.1f} tenants/s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tenants", nargs="?", type=int, default=20, help="tenants provisioned (default 20)")
    args = parser.parse_args()
    if args.tenants < 1:
        parser.error("tenants must be at least 1")
    main(args.tenants)
