"""Benchmark: Moran's throughput beside a bare Celery chain, on the same broker, database and worker, in one run.

    .venv/bin/python benchmarks/throughput.py --tenants 200 --engine null --concurrency 2
    .venv/bin/python benchmarks/throughput.py --tenants 200 --engine sandbox
    .venv/bin/python benchmarks/throughput.py --tenants 50 --profile      # in-process cProfile of the step path

It needs PostgreSQL and Redis (``DATABASE_URL`` names the server, ``CELERY_BROKER_URL`` the broker). It drops,
creates and migrates its own database (``--database``, default ``moran_bench``) on that server, starts its own
worker (``--concurrency`` prefork children, on a queue of its own), then:

1. **bare**: N chains of ten no-op tasks (``bench.noop``), the same shape as a run, through the same worker;
2. **moran**: N tenants created, then ``onboarding_start`` for each; a run is ten step tasks that lock, fence, write
   the step state and log, on the ``null`` engine (answers everything at no cost: Moran's own cost) or the ``sandbox``.

Throughput is chains (tenants) per second from the first send to the last completion (the last task's timestamp;
for Moran the runs' ``finished_at``). Per-step cost is measured in the worker around each task (``task_prerun`` to
``task_postrun``), SQL statements per step by a ``connection.execute_wrapper`` installed in each worker child (every
statement Django sends, savepoints included; not BEGIN/COMMIT, which the driver issues), transactions per step from
``pg_stat_database.xact_commit`` deltas (every session of the benchmark's database: the workers and this process).
The worker's children are not recycled during the run, so their RSS at the start and at the end shows any growth.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATS_ENV = "MORAN_BENCH_STATS"  # set in the benchmark's worker: the signal handlers below then record per task

# --- in the worker: the bare tasks and the per-task measurements ---------------------------------------------------
from celery import shared_task, signals  # noqa: E402


def _redis():
    import redis

    return redis.Redis.from_url(os.environ["CELERY_BROKER_URL"])


@shared_task(name="bench.noop", ignore_result=True)
def noop(chain_id, index, done_key=""):
    """A no-op step of the bare chain; the last one of a chain records when the chain ended."""
    if done_key:
        _redis().rpush(done_key, time.time())


_stats = {"t0": 0.0, "sql": 0, "db_ms": 0.0, "commits": 0, "exec_ms": 0.0, "client": None}


def _count_sql(execute, sql, params, many, context):
    _stats["sql"] += 1
    began = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        _stats["db_ms"] += (time.perf_counter() - began) * 1000


def _timed_commit(commit):
    def wrapper(self):
        _stats["commits"] += 1
        began = time.perf_counter()
        try:
            return commit(self)
        finally:
            _stats["db_ms"] += (time.perf_counter() - began) * 1000

    return wrapper


@signals.worker_process_init.connect
def _install_counter(**kwargs):
    if os.environ.get(STATS_ENV):
        from django.db import connection
        from django.db.backends.base.base import BaseDatabaseWrapper

        connection.execute_wrappers.append(_count_sql)
        # Commits do not pass through execute(): time them too (benchmark worker only).
        BaseDatabaseWrapper._commit = _timed_commit(BaseDatabaseWrapper._commit)
        # Moran's own part of a step task (the rest is Celery's: the tracer, the next message of the chain).
        import provisioning.tasks

        provisioning.tasks.step_execute = _timed_step_execute(provisioning.tasks.step_execute)


def _timed_step_execute(step_execute):
    def wrapper(**kwargs):
        began = time.perf_counter()
        try:
            return step_execute(**kwargs)
        finally:
            _stats["exec_ms"] += (time.perf_counter() - began) * 1000

    return wrapper


@signals.task_prerun.connect
def _task_began(task=None, **kwargs):
    if os.environ.get(STATS_ENV):
        _stats.update(t0=time.perf_counter(), sql=0, db_ms=0.0, commits=0, exec_ms=0.0)


@signals.task_postrun.connect
def _task_ended(task=None, **kwargs):
    if not os.environ.get(STATS_ENV) or task is None:
        return
    elapsed_ms = (time.perf_counter() - _stats["t0"]) * 1000
    kind = "bare" if task.name == "bench.noop" else "moran" if task.name.startswith("provisioning.step_") else None
    if kind is None:
        return
    prefix = f"{os.environ[STATS_ENV]}:{kind}"
    client = _stats["client"] = _stats["client"] or _redis()
    pipe = client.pipeline(transaction=False)
    pipe.incr(f"{prefix}:tasks")
    pipe.incrbyfloat(f"{prefix}:ms", elapsed_ms)
    pipe.incrby(f"{prefix}:sql", _stats["sql"])
    pipe.incrbyfloat(f"{prefix}:db_ms", _stats["db_ms"])
    pipe.incrby(f"{prefix}:commits", _stats["commits"])
    pipe.incrbyfloat(f"{prefix}:exec_ms", _stats["exec_ms"])
    pipe.execute()


# --- the driver ------------------------------------------------------------------------------------------------------
def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=positive, default=100, help="chains and tenants to run (default 100)")
    parser.add_argument("--engine", choices=["null", "sandbox"], default="null")
    parser.add_argument("--concurrency", type=positive, default=2, help="worker children (default 2)")
    parser.add_argument(
        "--rounds", type=positive, default=3, help="rounds of bare then Moran, back to back (default 3)"
    )
    parser.add_argument("--database", default="moran_bench", help="database to (re)create on the server")
    parser.add_argument("--profile", action="store_true", help="profile the step path in-process instead")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for a phase")
    return parser.parse_args(argv)


def prepare_environment(args) -> str:
    """Point this process (and the worker) at the benchmark's own database and queue; return the database URL."""
    import environ

    server = environ.Env.db_url_config(os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/moran"))
    if not server["ENGINE"].endswith("postgresql"):
        sys.exit("throughput.py needs PostgreSQL: set DATABASE_URL to a postgres:// URL (its server is used)")
    if args.database == server["NAME"]:
        sys.exit(f"--database {args.database} is the database DATABASE_URL names: the benchmark drops it; pick another")
    auth = server["USER"] + (f":{server['PASSWORD']}" if server.get("PASSWORD") else "")
    host = f"{server.get('HOST') or '127.0.0.1'}:{server.get('PORT') or 5432}"
    recreate_database(auth=auth, host=host, name=args.database)
    url = f"postgres://{auth}@{host}/{args.database}"
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
    if args.profile:
        os.environ["CELERY_BROKER_URL"] = ""  # in-process (eager) steps
    os.environ["MORAN_PROVISIONING_QUEUE"] = f"bench-{os.getpid()}"
    os.environ["MORAN_NULL_ENGINE"] = "1"
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")
    return url


def recreate_database(*, auth: str, host: str, name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(f"postgresql://{auth}@{host}/postgres")
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    conn.close()


class BenchWorker:
    """A real Celery worker on the benchmark's queue, with the bare tasks and the measurements loaded."""

    def __init__(self, *, queue: str, concurrency: int, stats_key: str):
        self.queue, self.concurrency, self.stats_key = queue, concurrency, stats_key
        self.log_path = ROOT / "var" / "bench-logs" / f"worker-{queue}.log"
        self.proc = None

    def start(self):
        import subprocess

        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            STATS_ENV: self.stats_key,
            "PYTHONUNBUFFERED": "1",
            "LOG_LEVEL": os.environ.get("WORKER_LOG_LEVEL", "INFO"),
            # Children live through the whole run, so their RSS at the end shows what one run of N tenants left.
            "MORAN_WORKER_MAX_TASKS_PER_CHILD": "1000000000",
        }
        command = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-Q", self.queue]
        command += ["-c", str(self.concurrency), "--pool", "prefork", "--loglevel", "INFO", "--without-gossip"]
        command += ["--without-mingle", "--include", "benchmarks.throughput", "-n", f"{self.queue}@%h"]
        log = open(self.log_path, "ab")  # noqa: SIM115 -- the worker writes to it for its whole life
        self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while b"ready." not in self.log_path.read_bytes()[-20000:]:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start; see {self.log_path}")
            time.sleep(0.2)
        return self

    def children_rss_mb(self) -> list[float]:
        pid = self.proc.pid
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        return [rss_mb(int(child)) for child in children]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except Exception:
                self.proc.kill()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def xact_commits(database: str) -> int:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s", [database])
        return cursor.fetchone()[0]


def worker_stats(stats_key: str, kind: str) -> dict:
    client = _redis()
    names = ("tasks", "ms", "sql", "db_ms", "commits", "exec_ms")
    values = client.mget([f"{stats_key}:{kind}:{name}" for name in names])
    return {name: float(v or 0) for name, v in zip(names, values, strict=True)}


def run_bare(*, n: int, queue: str, key: str, timeout: float) -> tuple[float, float]:
    """N chains of ten no-op tasks; returns (seconds from the first send to the last chain's end, seconds to send)."""
    from celery import chain

    client = _redis()
    done_key = f"{key}:bare-done"
    client.delete(done_key)
    began = time.time()
    for i in range(n):
        tasks = [noop.si(i, k, done_key=done_key if k == 9 else "").set(queue=queue) for k in range(10)]
        chain(*tasks).apply_async()
    sent = time.time() - began
    deadline = time.monotonic() + timeout
    while client.llen(done_key) < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bare chains: {client.llen(done_key)}/{n} done after {timeout} s")
        time.sleep(0.05)
    return max(float(t) for t in client.lrange(done_key, 0, -1)) - began, sent


def make_tenants(*, n: int, engine, prefix: str, abbr: str = "") -> list:
    from tenants.services import tenant_create

    return [
        tenant_create(
            slug=f"{prefix}-{i}",
            company_name=f"{prefix.title()} {i} Ltd",
            abbr=f"{abbr or prefix[:2].upper()}{i}",
            currency="EUR",
            country="Germany",
            admin_email=f"admin{i}@{prefix}.test",
            extra_cost_centers=["Operations"],
            extra_warehouses=["Returns"],
            engine=engine,
        )
        for i in range(n)
    ]


def run_moran(*, tenants: list, timeout: float) -> tuple[float, float, float]:
    """Start every tenant's run; returns (seconds from the first start to the last run's end, seconds to start them
    all, SQL statements per start in this process)."""
    from django.db import connection
    from django.db.models import Max

    from provisioning.models import Onboarding, OnboardingStatus
    from provisioning.services import onboarding_start

    ids = [t.onboarding.pk for t in tenants]
    statements = [0]

    def count(execute, sql, params, many, context):
        statements[0] += 1
        return execute(sql, params, many, context)

    began_wall = time.time()
    with connection.execute_wrapper(count):
        for tenant in tenants:
            onboarding_start(onboarding=tenant.onboarding, requested_by="benchmark")
    sent = time.time() - began_wall
    ended = [OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED]
    deadline = time.monotonic() + timeout
    while (done := Onboarding.objects.filter(pk__in=ids, status__in=ended).count()) < len(ids):
        if time.monotonic() > deadline:
            raise RuntimeError(f"moran: {done}/{len(ids)} onboardings ended after {timeout} s")
        time.sleep(0.25)
    not_completed = Onboarding.objects.filter(pk__in=ids).exclude(status=OnboardingStatus.COMPLETED).count()
    if not_completed:
        print(f"warning: {not_completed} onboardings did not complete (see the step logs)")
    last = Onboarding.objects.filter(pk__in=ids).aggregate(last=Max("finished_at"))["last"]
    return last.timestamp() - began_wall, sent, statements[0] / len(ids)


def settle_stats() -> None:
    """PostgreSQL publishes an idle session's counters within about ten seconds: wait for the workers' to land."""
    time.sleep(11)


def benchmark_engine(kind: str):
    from tenants.models import EngineConnection
    from tenants.services import engine_get

    if kind == "null":
        return EngineConnection.objects.get_or_create(name="null-bench", defaults={"kind": EngineConnection.Kind.NULL})[
            0
        ]
    return engine_get(name="sandbox")


def measure(args, worker: BenchWorker, stats_key: str) -> dict:
    queue = os.environ["MORAN_PROVISIONING_QUEUE"]
    engine = benchmark_engine(args.engine)
    # Warm up both paths (imports, connections, the sandbox's site) before anything is timed.
    run_bare(n=2 * args.concurrency, queue=queue, key=f"{stats_key}:warm", timeout=args.timeout)
    run_moran(tenants=make_tenants(n=2 * args.concurrency, engine=engine, prefix="warm"), timeout=args.timeout)
    settle_stats()
    rss_start = worker.children_rss_mb()
    base = {kind: worker_stats(stats_key, kind) for kind in ("bare", "moran")}
    rounds = []
    # Rounds of bare then Moran back to back: the shared machine's speed drifts over minutes, and each round's ratio
    # compares two phases measured moments apart.
    for index in range(args.rounds):
        tenants = make_tenants(n=args.tenants, engine=engine, prefix=f"bench{index}", abbr=f"B{index}R")
        x0 = xact_commits(args.database)
        bare_s, bare_sent = run_bare(n=args.tenants, queue=queue, key=f"{stats_key}:{index}", timeout=args.timeout)
        settle_stats()
        x1 = xact_commits(args.database)
        moran_s, moran_sent, start_sql = run_moran(tenants=tenants, timeout=args.timeout)
        settle_stats()
        x2 = xact_commits(args.database)
        rounds.append(
            {
                "bare_s": bare_s,
                "bare_sent": bare_sent,
                "moran_s": moran_s,
                "moran_sent": moran_sent,
                "start_sql": start_sql,
                "bare_xact": x1 - x0,
                "moran_xact": x2 - x1,
            }
        )

    delta = {}
    for kind in ("bare", "moran"):
        now = worker_stats(stats_key, kind)
        delta[kind] = {k: now[k] - base[kind][k] for k in now}
    return {"rounds": rounds, "stats": delta, "rss_start": rss_start, "rss_end": worker.children_rss_mb()}


def report(args, r: dict) -> None:
    rounds = r["rounds"]
    n, steps = args.tenants * len(rounds), args.tenants * len(rounds) * 10
    bare, moran = r["stats"]["bare"], r["stats"]["moran"]
    total = lambda key: sum(x[key] for x in rounds)  # noqa: E731
    bare_rate, moran_rate = n / total("bare_s"), n / total("moran_s")
    per = lambda total, count: total / count if count else float("nan")  # noqa: E731
    print(
        f"engine {args.engine}; tenants {args.tenants} a round, {len(rounds)} rounds; "
        f"worker concurrency {args.concurrency}; database {args.database}"
    )
    ratios = []
    for index, x in enumerate(rounds):
        ratios.append((args.tenants / x["moran_s"]) / (args.tenants / x["bare_s"]))
        print(
            f"round {index + 1}: bare {args.tenants / x['bare_s']:.2f}/s ({x['bare_s']:.1f} s, sent in "
            f"{x['bare_sent']:.1f} s), moran {args.tenants / x['moran_s']:.2f}/s ({x['moran_s']:.1f} s, started in "
            f"{x['moran_sent']:.1f} s), ratio {ratios[-1]:.2f}"
        )
    print(f"bare  {bare_rate:.2f}/s  ({total('bare_s'):.1f} s for {n} chains of 10 no-op tasks)")
    print(f"moran {moran_rate:.2f}/s  ({total('moran_s'):.1f} s for {n} tenants)")
    print(
        f"ratio {statistics.median(ratios):.2f}  (moran / bare throughput: the median of the rounds' ratios; "
        f"of the totals {moran_rate / bare_rate:.2f})"
    )
    print(
        f"per step in the worker (task_prerun..task_postrun): moran {per(moran['ms'], moran['tasks']):.2f} ms, "
        f"bare {per(bare['ms'], bare['tasks']):.2f} ms; tasks seen: moran {moran['tasks']:.0f}, bare {bare['tasks']:.0f}"
    )
    print(
        f"  of which in step_execute (Moran's own; the rest is Celery's task and the chain's next message):"
        f" {per(moran['exec_ms'], moran['tasks']):.2f} ms"
    )
    print(
        f"per step, wall x concurrency: moran {total('moran_s') * args.concurrency / steps * 1000:.2f} ms, "
        f"bare {total('bare_s') * args.concurrency / steps * 1000:.2f} ms"
    )
    print(
        f"  of which waiting on the database (statements and commits): moran {per(moran['db_ms'], moran['tasks']):.2f} ms"
        f" ({per(moran['commits'], moran['tasks']):.1f} commits/step), bare {per(bare['db_ms'], bare['tasks']):.2f} ms"
    )
    print(
        f"SQL statements per step (execute_wrapper in the worker): moran {per(moran['sql'], moran['tasks']):.1f}, "
        f"bare {per(bare['sql'], bare['tasks']):.1f}; per onboarding_start (this process): "
        f"{total('start_sql') / len(rounds):.1f}"
    )
    print(
        f"transactions per step (pg_stat_database.xact_commit, all sessions): moran {total('moran_xact') / steps:.1f}, "
        f"bare {total('bare_xact') / steps:.1f}"
    )
    print(
        "worker children RSS (MB): start "
        + ", ".join(f"{v:.1f}" for v in r["rss_start"])
        + "; end "
        + ", ".join(f"{v:.1f}" for v in r["rss_end"])
    )


def profile(args) -> None:
    """The step path in-process (eager tasks, PostgreSQL), under cProfile: where Moran's own time goes."""
    import cProfile
    import pstats

    from provisioning.services import onboarding_start

    engine = benchmark_engine(args.engine)
    warm = make_tenants(n=2, engine=engine, prefix="warm")
    for tenant in warm:
        onboarding_start(onboarding=tenant.onboarding)
    tenants = make_tenants(n=args.tenants, engine=engine, prefix="bench")
    profiler = cProfile.Profile()
    began = time.perf_counter()
    profiler.enable()
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    profiler.disable()
    elapsed = time.perf_counter() - began
    print(
        f"in-process, eager: {args.tenants} tenants in {elapsed:.2f} s = {elapsed / args.tenants / 10 * 1000:.2f} ms/step"
    )
    stats = pstats.Stats(profiler)
    stats.sort_stats("cumulative").print_stats(r"(provisioning|moran|tenants|celery/(app|canvas)|django/db)", 45)


def main(argv=None) -> None:
    args = parse_args(argv)
    sys.path.insert(0, str(ROOT))
    prepare_environment(args)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    if args.profile:
        profile(args)
        return
    stats_key = f"moran-bench:{os.getpid()}"
    worker = BenchWorker(
        queue=os.environ["MORAN_PROVISIONING_QUEUE"], concurrency=args.concurrency, stats_key=stats_key
    ).start()
    try:
        result = measure(args, worker, stats_key)
    finally:
        worker.stop()
    report(args, result)


if __name__ == "__main__":
    main()
