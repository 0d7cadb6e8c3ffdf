"""Benchmark: the read paths at scale (10,000 tenants, 250,000 step log lines), as p50/p95 and query counts.

    .venv/bin/python benchmarks/scale.py [--tenants 10000] [--lines-per-tenant 25] [--active 1000] [--reuse]

It needs PostgreSQL (``DATABASE_URL`` names the server). It drops, creates, migrates and seeds its own database
(``--database``, default ``moran_scale``) in bulk (``bulk_create``, and ``COPY`` for the log lines), then times each
read in-process through Django's test client (middleware, authentication, rendering included): the status and logs
of a tenant, the tenant list (first and a deep page) and its search, the admin lists (onboardings, tenants, step logs;
first and deep page), the webhook deliveries' admin list, ``/metrics``, and one pass of the sweeper over ``--active``
runs in flight: their steps began just now and their leases are held by another session, as live workers would hold
them (the pass then finds nothing to do, and the benchmark says so if it found anything). Lists are measured at two
page sizes, to show that their query counts do not grow with the page. ``--reuse`` keeps a database seeded by an
earlier run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import random
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORDS = (
    "amber birch cedar delta ember fjord granite harbor iris juniper kestrel lumen maple nimbus onyx pine quartz "
    "raven sierra tundra umber violet willow xenon yarrow zephyr atlas beacon comet dune"
).split()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=10_000)
    parser.add_argument("--lines-per-tenant", type=int, default=25)
    parser.add_argument("--active", type=int, default=1_000, help="onboardings with a run in flight")
    parser.add_argument("--repeat", type=int, default=30, help="timed requests per read (default 30)")
    parser.add_argument("--database", default="moran_scale")
    parser.add_argument("--reuse", action="store_true", help="keep the database if it is seeded already")
    return parser.parse_args(argv)


def prepare(args) -> bool:
    """Point Django at the benchmark's database (created, or kept with --reuse). Returns True when it must be seeded."""
    import environ
    import psycopg2

    server = environ.Env.db_url_config(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/moran"))
    if not server["ENGINE"].endswith("postgresql"):
        sys.exit("scale.py needs PostgreSQL: set DATABASE_URL to a postgres:// URL (its server is used)")
    if args.database == server["NAME"]:
        sys.exit(f"--database {args.database} is the database DATABASE_URL names: the benchmark drops it; pick another")
    auth = server["USER"] + (f":{server['PASSWORD']}" if server.get("PASSWORD") else "")
    host = f"{server.get('HOST') or '127.0.0.1'}:{server.get('PORT') or 5432}"
    conn = psycopg2.connect(f"postgresql://{auth}@{host}/postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [args.database])
        exists = cursor.fetchone() is not None
        if not (exists and args.reuse):
            cursor.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
            cursor.execute(f'CREATE DATABASE "{args.database}"')
    conn.close()
    os.environ["DATABASE_URL"] = f"postgres://{auth}@{host}/{args.database}"
    os.environ["CELERY_BROKER_URL"] = ""  # nothing is enqueued: the benchmark only reads
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")
    return not (exists and args.reuse)


# --- seeding -------------------------------------------------------------------------------------------------------
def steps_for(kind: str, now: dt.datetime, run_id: str) -> dict:
    """The step states of a seeded onboarding: completed, partial (step 4 failed) or in flight (step 5 running)."""
    from provisioning.state import empty_step, now_iso
    from provisioning.steps import STEP_NAMES

    stamp = now_iso()
    steps = {}
    for i, name in enumerate(STEP_NAMES):
        entry = empty_step()
        if kind == "completed" or i < (4 if kind == "partial" else 5):
            entry.update(status="completed", attempts=1, started_at=stamp, finished_at=stamp, run_id=run_id)
            entry["result"] = {"company": "seeded"}
        elif kind == "partial" and i == 4:
            entry.update(status="failed", attempts=1, started_at=stamp, finished_at=stamp, run_id=run_id)
            entry["error"] = {"type": "ValidationError", "message": "seeded failure", "engine_status": 417}
        elif kind == "active" and i == 5:
            entry.update(status="running", attempts=1, started_at=stamp, run_id=run_id)
        steps[name] = entry
    return steps


def seed(args) -> None:
    from django.db import connection, transaction

    from provisioning.models import Onboarding, ProvisioningRun
    from tenants.models import Tenant
    from tenants.services import engine_get

    began = time.perf_counter()
    engine = engine_get(name="sandbox")
    now = dt.datetime.now(dt.UTC)
    n, active = args.tenants, min(args.active, args.tenants)
    kinds = ["active"] * active + ["partial"] * (n // 10) + ["completed"] * max(0, n - active - n // 10)
    random.Random(7).shuffle(kinds)
    tenants = [seed_tenant(i, engine) for i in range(n)]
    with transaction.atomic():
        Tenant.objects.bulk_create(tenants, batch_size=2000)
        pairs = [seed_onboarding(tenant, kind, now) for tenant, kind in zip(tenants, kinds, strict=True)]
        onboardings, runs = [o for o, _ in pairs], [r for _, r in pairs]
        Onboarding.objects.bulk_create(onboardings, batch_size=2000)
        for run, onboarding in zip(runs, onboardings, strict=True):
            run.onboarding = onboarding
        ProvisioningRun.objects.bulk_create(runs, batch_size=2000)
        copy_log_lines(onboardings, runs, per_tenant=args.lines_per_tenant, now=now)
        spread_timestamps(now)
        seed_attempts()
        seed_deliveries(now)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"seeded {n} tenants, {n * args.lines_per_tenant} log lines in {time.perf_counter() - began:.1f} s")


def seed_tenant(i: int, engine):
    from tenants.models import Tenant

    a, b = WORDS[i % len(WORDS)], WORDS[(i * 7 + 3) % len(WORDS)]
    return Tenant(
        slug=f"t{i:05d}-{a}",
        name=f"{a.title()} {b.title()} {i:05d}",
        company_name=f"{b.title()} {a.title()} {i:05d} Ltd",
        abbr=f"A{i:05d}",
        currency="EUR",
        country="Germany",
        admin_email=f"admin{i}@{a}.example",
        engine=engine,
    )


def seed_onboarding(tenant, kind: str, now: dt.datetime):
    """An onboarding as the writer leaves it (derived fields included) and its run (linked once both are saved)."""
    from provisioning.models import Onboarding, ProvisioningRun
    from provisioning.state import derive

    run = ProvisioningRun(
        id=uuid.uuid4(),
        kind="start",
        outcome={"active": "active", "partial": "stopped", "completed": "completed"}[kind],
        enqueued_at=now,
        finished_at=None if kind == "active" else now,
    )
    steps = steps_for(kind, now, str(run.id))
    derived = derive(steps, run_active=kind == "active", previous_status="PENDING")
    onboarding = Onboarding(
        tenant=tenant,
        status=derived.status,
        current_step=derived.current_step,
        run_id=run.id if kind == "active" else None,
        provisioning_steps=steps,
        steps_completed=derived.steps_completed,
        progress=derived.progress,
        started_at=now,
        finished_at=None if kind == "active" else now,
    )
    return onboarding, run


def copy_log_lines(onboardings, runs, *, per_tenant: int, now: dt.datetime) -> None:
    """Log lines with COPY: an attempt's start and end a few hundred milliseconds apart, some retried."""
    from django.db import connection

    from provisioning.models import StepLog
    from provisioning.steps import STEP_NAMES

    buffer = io.StringIO()
    for onboarding, run in zip(onboardings, runs, strict=True):
        at = now - dt.timedelta(days=30)
        lines = [("", 0, "info", "start requested: a new run starts")]
        for i in range((per_tenant - 1) // 2):
            step = STEP_NAMES[i % len(STEP_NAMES)]
            attempt = 1 + i // len(STEP_NAMES)
            lines.append((step, attempt, "info", f"attempt {attempt} started"))
            ended = (
                ("warning", "transient error (EngineTransientError: 503); retrying in 2.0 s")
                if i % 9 == 8
                else (
                    "info",
                    "completed: nothing to create",
                )
            )
            lines.append((step, attempt, *ended))
        while len(lines) < per_tenant:
            lines.append(("", 0, "info", "webhook delivered"))
        for step, attempt, level, message in lines[:per_tenant]:
            at += dt.timedelta(milliseconds=random.randint(20, 900))
            buffer.write(f"{onboarding.pk}\t{run.id}\t{step}\t{attempt}\t{level}\t{message}\t{at.isoformat()}\n")
    buffer.seek(0)
    columns = "onboarding_id, run_id, step, attempt, level, message, created_at"
    with connection.cursor() as cursor:
        cursor.cursor.copy_expert(f"COPY {StepLog._meta.db_table} ({columns}) FROM STDIN", buffer)


def seed_attempts() -> None:
    """When attempts are rows (``provisioning.StepAttempt``), one per attempt the log lines tell of, so that
    ``/metrics`` reads them as it would in life."""
    from django.apps import apps
    from django.db import connection

    try:
        model = apps.get_model("provisioning", "StepAttempt")
    except LookupError:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {model._meta.db_table} (onboarding_id, run_id, step, number, started_at, finished_at,"  # noqa: S608
            " outcome, ended_by, error, duration_ms, worker)"
            " SELECT onboarding_id, run_id, step, attempt, MIN(created_at), MAX(created_at),"
            " CASE WHEN MAX(level) = 'warning' THEN 'retrying' ELSE 'completed' END, 'worker', NULL,"
            " (EXTRACT(EPOCH FROM MAX(created_at) - MIN(created_at)) * 1000)::int, 'seeded'"
            " FROM provisioning_steplog WHERE attempt > 0 AND step <> ''"
            " GROUP BY onboarding_id, run_id, step, attempt HAVING COUNT(*) >= 2"
        )


def seed_deliveries(now: dt.datetime) -> None:
    """One webhook delivery per ended run (the outbox's row), most delivered after one try, some failed."""
    from django.db import connection

    from provisioning.models import WebhookDelivery
    from provisioning.webhooks.outbox import EVENT

    table = WebhookDelivery._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (tenant_id, run_id, event, status, idempotency_key, payload, state, attempts,"  # noqa: S608
            " max_attempts, next_attempt_at, last_status_code, last_error, delivered_at, created_at, updated_at)"
            " SELECT o.tenant_id, r.id, %s, o.status, r.id::text || ':' || o.status,"
            " jsonb_build_object('event', %s, 'status', o.status, 'run', jsonb_build_object('id', r.id::text)),"
            " CASE WHEN o.id %% 20 = 0 THEN 'failed' ELSE 'delivered' END, CASE WHEN o.id %% 20 = 0 THEN 6 ELSE 1 END,"
            " 6, r.created_at, CASE WHEN o.id %% 20 = 0 THEN 503 ELSE 200 END,"
            " CASE WHEN o.id %% 20 = 0 THEN 'HTTP 503 from the receiver' ELSE '' END,"
            " CASE WHEN o.id %% 20 = 0 THEN NULL ELSE r.created_at END, r.created_at, r.created_at"
            " FROM provisioning_provisioningrun r JOIN provisioning_onboarding o ON o.id = r.onboarding_id"
            " WHERE r.outcome <> 'active'",
            [EVENT, EVENT],
        )


def live_runs_in_flight():
    """The runs in flight as live workers leave them: the running step began just now, and its lease is held by a
    session of its own (returned: keep it open while the sweeper is measured)."""
    import psycopg2
    from django.db import connection

    from provisioning.locks import step_lease_key
    from provisioning.models import Onboarding
    from provisioning.state import now_iso

    stamp, keys, changed = now_iso(), [], []
    for onboarding in Onboarding.objects.filter(run_id__isnull=False).only("id", "run_id", "provisioning_steps"):
        for name, entry in onboarding.provisioning_steps.items():
            if entry.get("status") == "running":
                entry["started_at"] = stamp
                keys.append(step_lease_key(onboarding.run_id, name))
        changed.append(onboarding)
    Onboarding.objects.bulk_update(changed, ["provisioning_steps"], batch_size=500)
    settings = connection.settings_dict
    workers = psycopg2.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
    )
    workers.autocommit = True
    with workers.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(k) FROM unnest(%s::bigint[]) AS k", [keys])
    return workers


def spread_timestamps(now: dt.datetime) -> None:
    """bulk_create stamps every row with the same moment: spread creation and activity over a month, as in life."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE tenants_tenant t SET created_at = %s - s.n * interval '4 minutes' FROM"
            " (SELECT id, row_number() OVER (ORDER BY slug DESC) AS n FROM tenants_tenant) s WHERE s.id = t.id",
            [now],
        )
        cursor.execute(
            "UPDATE provisioning_onboarding o SET created_at = t.created_at,"
            " updated_at = CASE WHEN o.run_id IS NULL THEN t.created_at + interval '5 minutes' ELSE %s END"
            " FROM tenants_tenant t WHERE t.id = o.tenant_id",
            [now],
        )
        cursor.execute(
            "UPDATE provisioning_provisioningrun r SET created_at = o.created_at FROM provisioning_onboarding o"
            " WHERE o.id = r.onboarding_id"
        )


# --- measuring -----------------------------------------------------------------------------------------------------
def measure(label: str, fn, *, repeat: int) -> dict:
    """Time ``fn`` ``repeat`` times (after one warm-up) and count the queries of one more call."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    fn()
    times = []
    for _ in range(repeat):
        began = time.perf_counter()
        fn()
        times.append((time.perf_counter() - began) * 1000)
    with CaptureQueriesContext(connection) as ctx:
        fn()
    p50 = statistics.median(times)
    p95 = statistics.quantiles(times, n=20)[-1] if len(times) >= 2 else times[0]
    sql_ms = sum(float(q["time"]) for q in ctx.captured_queries) * 1000
    print(
        f"{label:<52} p50 {p50:7.1f} ms   p95 {p95:7.1f} ms   queries {len(ctx.captured_queries):4d}"
        f" (SQL {sql_ms:6.1f} ms of one call)"
    )
    return {"p50": p50, "p95": p95, "queries": len(ctx.captured_queries)}


def get(client, url: str, **headers):
    def call():
        response = client.get(url, **headers)
        if response.status_code != 200:
            raise RuntimeError(f"GET {url}: {response.status_code} {response.content[:300]!r}")
        return response

    return call


def clients():
    from django.contrib.auth import get_user_model
    from django.test import Client

    from accounts.services import token_issue

    user_model = get_user_model()
    admin = user_model.objects.filter(username="bench-admin").first() or user_model.objects.create_superuser(
        "bench-admin", "bench-admin@example.com", "bench-password-123"
    )
    token = token_issue(email=admin.email, password="bench-password-123").token
    web = Client()
    web.force_login(admin)
    return Client(), {"HTTP_AUTHORIZATION": f"Bearer {token}"}, web


def run_reads(args) -> None:
    from provisioning.models import Onboarding, StepLog
    from provisioning.recovery import active_runs, sweep
    from tenants.models import Tenant

    api, auth, web = clients()
    n = Tenant.objects.count()
    active = Onboarding.objects.exclude(run_id=None).count()
    print(f"\n{n} tenants, {StepLog.objects.count()} log lines, {active} runs in flight")
    api_reads(api, auth, n=n, repeat=args.repeat)
    admin_reads(web, repeat=args.repeat)
    measure("metrics GET /metrics", get(api, "/metrics"), repeat=max(5, args.repeat // 3))
    workers = live_runs_in_flight()
    try:
        found = [problem for problem in map(diagnosed, active_runs()) if problem]
        if found:
            sys.exit(f"the sweeper would act on {len(found)} runs (e.g. {found[0]}): not measured")
        measure("sweeper one pass (in-process, nothing to do)", sweep, repeat=max(5, args.repeat // 3))
    finally:
        workers.close()


def diagnosed(pair):
    """What the sweeper would find (reads only: a pass that acts would run chains in-process here)."""
    from django.utils import timezone

    from provisioning.recovery import diagnose

    return diagnose(*pair, now=timezone.now())


def api_reads(api, auth, *, n: int, repeat: int) -> None:
    from tenants.models import Tenant

    rng = random.Random(11)
    slugs = list(Tenant.objects.order_by("?").values_list("slug", flat=True)[:200])
    for read in ("status", "logs"):
        measure(
            f"{read:<7} GET /api/provisioning/tenants/<t>/{read}",
            lambda read=read: get(api, f"/api/provisioning/tenants/{rng.choice(slugs)}/{read}", **auth)(),
            repeat=repeat,
        )
    for size in (50, 200):
        deep = max(1, n // size - 1)
        url = f"/api/tenants?page_size={size}"
        measure(f"tenants GET /api/tenants page 1, page_size {size}", get(api, url, **auth), repeat=repeat)
        measure(
            f"tenants GET /api/tenants page {deep}, page_size {size}",
            get(api, f"{url}&page={deep}", **auth),
            repeat=repeat,
        )
    for term in ("kestrel", "t04321", "Ltd", "A01234"):
        measure(
            f"search  GET /api/tenants?search={term}", get(api, f"/api/tenants?search={term}", **auth), repeat=repeat
        )


def admin_reads(web, *, repeat: int) -> None:
    from django.contrib import admin

    from provisioning.models import Onboarding, StepLog, WebhookDelivery
    from tenants.models import Tenant

    lists = (
        ("onboarding", Onboarding, "/admin/provisioning/onboarding/"),
        ("tenants", Tenant, "/admin/tenants/tenant/"),
        ("step logs", StepLog, "/admin/provisioning/steplog/"),
        ("webhooks", WebhookDelivery, "/admin/provisioning/webhookdelivery/"),
    )
    for name, model, url in lists:
        model_admin = admin.site._registry[model]
        original = model_admin.list_per_page
        for size in (original, original * 2):
            model_admin.list_per_page = size
            deep = max(1, model.objects.count() // size - 1)
            measure(f"admin   {name} page 1 ({size} a page)", get(web, url), repeat=repeat)
            measure(f"admin   {name} page {deep} ({size} a page)", get(web, f"{url}?p={deep}"), repeat=repeat)
        model_admin.list_per_page = original
    steplogs = "/admin/provisioning/steplog/"
    measure("admin   step logs filtered by step", get(web, f"{steplogs}?step=step_6_master_data"), repeat=repeat)
    measure("admin   step logs filtered by level", get(web, f"{steplogs}?level=warning"), repeat=repeat)
    measure("admin   onboarding search", get(web, "/admin/provisioning/onboarding/?q=kestrel"), repeat=repeat)
    measure("admin   tenants search", get(web, "/admin/tenants/tenant/?q=t04321"), repeat=repeat)


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    fresh = prepare(args)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if fresh:
        seed(args)
    run_reads(args)


if __name__ == "__main__":
    main()
