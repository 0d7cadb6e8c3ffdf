"""Tools of the fault tests: the broker of a fault test (a private Redis, or the RabbitMQ the session was given),
killing pool children, watching steps that stand running without a live worker, and the checks that every fault test
ends with (a true end state, attempts that add up with the log, exactly one of each resource in the engine)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from django.db import connection
from django.utils.dateparse import parse_datetime

from celery_app import app as celery_app
from provisioning.models import Onboarding, OnboardingStatus, SandboxDocument, StepAttempt, StepLog, StepStatus
from provisioning.state import normalised
from provisioning.steps import STEP_NAMES
from tests.support import workers

ROOT = Path(__file__).resolve().parents[2]
END_STATES = {OnboardingStatus.COMPLETED, OnboardingStatus.PARTIAL, OnboardingStatus.FAILED}
STARTED = re.compile(r"^attempt (\d+) started$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server of the test's own, on a free port, keeping nothing on disk (a restart loses every message, as
    a crashed broker without persistence would). Never the machine's shared Redis."""

    def __init__(self, *, bind: tuple[str, ...] = ("127.0.0.1",)):
        self.port = free_port()
        self.bind = bind
        self.dir = tempfile.mkdtemp(prefix="moran-redis-")
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", *self.bind, "--save", "", "--appendonly", "no"]
            # Protected mode refuses clients from any address but loopback; a test's own veth address is its own.
            + ["--protected-mode", "no" if len(self.bind) > 1 else "yes"]
            + ["--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def restart(self, down_for: float = 1.0):
        self.kill()
        time.sleep(down_for)
        self.start()

    def close(self):
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class SessionBroker:
    """The RabbitMQ the test session was given (``CELERY_BROKER_URL=amqp://…``, a vhost of its own): queues are
    unique per test, so nothing mixes. It cannot be restarted by a test (it is the machine's)."""

    kind = "rabbitmq"

    def __init__(self, url: str):
        self.url = url

    def close(self):
        pass


def fault_broker():
    """The broker a fault test's workers use: RabbitMQ when the session runs on it, else a private Redis (never the
    machine's shared Redis, so that a test may restart it)."""
    from django.conf import settings

    if settings.CELERY_BROKER_URL.startswith(("amqp://", "pyamqp://")):
        return SessionBroker(settings.CELERY_BROKER_URL)
    server = RedisServer().start()
    server.kind = "redis"
    return server


def recovery_bound(kind: str) -> float:
    """How soon every tenant must move again after a worker is lost: RabbitMQ hands a dead consumer's messages back
    at once; on Redis only the sweeper's liveness evidence does."""
    return 30.0 if kind == "rabbitmq" else 60.0


def began_since(onboarding_id, since) -> bool:
    """The onboarding is at an end state, or one of its steps began after ``since`` (an aware datetime)."""
    onboarding = Onboarding.objects.get(pk=onboarding_id)
    if onboarding.status in END_STATES:
        return True
    stamps = [e["started_at"] for e in normalised(onboarding.provisioning_steps).values() if e["started_at"]]
    return any(parse_datetime(stamp) > since for stamp in stamps)


def wait_moving(onboarding_ids, since, *, timeout: float):
    """Wait until every onboarding moved again (a step began) after ``since``, or reached an end state."""
    return wait_for(
        lambda: all(began_since(pk, since) for pk in onboarding_ids),
        timeout=timeout,
        interval=0.5,
        message="every tenant moving again",
    )


@contextlib.contextmanager
def broker(url: str):
    """Point this test process's Celery app (the one that enqueues runs) at another broker for a while."""
    previous, previous_env = celery_app.conf.broker_url, os.environ.get("CELERY_BROKER_URL")
    # Celery reads CELERY_BROKER_URL from the environment before its configuration.
    os.environ["CELERY_BROKER_URL"] = url
    celery_app.conf.broker_url = url
    celery_app._after_fork()  # drop the connection and producer pools of the previous broker
    try:
        yield
    finally:
        if previous_env is None:
            os.environ.pop("CELERY_BROKER_URL", None)
        else:
            os.environ["CELERY_BROKER_URL"] = previous_env
        celery_app.conf.broker_url = previous
        celery_app._after_fork()


def pool_children(pid: int) -> list[int]:
    """The pool processes of a worker (the children of its main process)."""
    children = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            children += [int(c) for c in (task / "children").read_text().split()]
    return children


def kill_pool_children(worker) -> int:
    killed = 0
    for child in pool_children(worker.proc.pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)
            killed += 1
    return killed


def wait_for(predicate, *, timeout: float, interval: float = 0.2, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"{message} not reached within {timeout} s")


def running_step(onboarding_id) -> str | None:
    steps = normalised(Onboarding.objects.get(pk=onboarding_id).provisioning_steps)
    return next((name for name, entry in steps.items() if entry["status"] == "running"), None)


def wait_all(onboarding_ids, statuses=END_STATES, *, timeout: float, tick=None) -> dict:
    """Wait until every onboarding is in one of ``statuses`` (calling ``tick()`` between polls, e.g. a sweep).

    An onboarding that ended in another end state (PARTIAL where COMPLETED was awaited) fails the wait at once: no
    worker or sweeper moves it again, and the failure names its failed steps and their errors."""
    statuses = set(statuses)
    deadline = time.monotonic() + timeout
    while True:
        rows = dict(Onboarding.objects.filter(pk__in=onboarding_ids).values_list("pk", "status"))
        if all(rows[pk] in statuses for pk in onboarding_ids):
            return rows
        ended_otherwise = [pk for pk, status in rows.items() if status in END_STATES and status not in statuses]
        if ended_otherwise:
            raise AssertionError(f"onboardings ended outside {statuses}: {failed_steps(ended_otherwise)}")
        if time.monotonic() > deadline:
            late = Counter(status for status in rows.values() if status not in statuses)
            raise AssertionError(f"not all onboardings reached {statuses} within {timeout} s: {late}")
        if tick:
            tick()
        time.sleep(0.5)


def failed_steps(onboarding_ids) -> dict:
    """Per onboarding: its status and each unfinished step's status, attempts and error, with its last log lines."""
    found = {}
    for onboarding in Onboarding.objects.filter(pk__in=onboarding_ids).select_related("tenant"):
        steps = {
            name: {k: entry.get(k) for k in ("status", "attempts", "error")}
            for name, entry in normalised(onboarding.provisioning_steps).items()
            if entry["status"] not in (StepStatus.COMPLETED, StepStatus.SKIPPED)
        }
        lines = StepLog.objects.filter(onboarding=onboarding).order_by("-id").values_list("step", "message")[:8]
        found[onboarding.tenant.slug] = {"status": onboarding.status, "steps": steps, "last logs": list(lines)[::-1]}
    return found


#: the outcome a step's last attempt must have when the step rests in this status.
LAST_ATTEMPT = {
    StepStatus.COMPLETED: {StepAttempt.Outcome.COMPLETED},
    StepStatus.SKIPPED: {StepAttempt.Outcome.SKIPPED},
    StepStatus.RETRYING: {StepAttempt.Outcome.RETRYING},
    StepStatus.RUNNING: {StepAttempt.Outcome.RUNNING},
    # the sweeper marks a poison step failed after its last attempt was interrupted
    StepStatus.FAILED: {StepAttempt.Outcome.FAILED, StepAttempt.Outcome.INTERRUPTED},
}


def assert_attempts_add_up(onboarding: Onboarding):
    """Every attempt counted on a step has exactly one 'started' line and exactly one end line (completed,
    retrying, failed, skipped or interrupted) in the step log, and the count is what the step says. The attempt
    rows agree: one per attempt, only the running step's last one open, the last one's outcome the step's status."""
    _assert_log_lines_add_up(onboarding)
    steps = normalised(onboarding.provisioning_steps)
    rows: dict[str, list] = {}
    for step, number, outcome in (
        StepAttempt.objects.filter(onboarding=onboarding).order_by("number").values_list("step", "number", "outcome")
    ):
        rows.setdefault(step, []).append((number, outcome))
    for name in STEP_NAMES:
        entry, got = steps[name], rows.get(name, [])
        where = f"{onboarding.tenant.slug} {name}"
        assert [n for n, _ in got] == list(range(1, entry["attempts"] + 1)), f"{where}: {entry}, attempt rows {got}"
        still_open = [n for n, outcome in got if outcome == StepAttempt.Outcome.RUNNING]
        assert still_open == ([entry["attempts"]] if entry["status"] == StepStatus.RUNNING else []), where
        if got and entry["status"] in LAST_ATTEMPT:
            assert got[-1][1] in LAST_ATTEMPT[entry["status"]], f"{where} is {entry['status']}: attempt rows {got}"


def _assert_log_lines_add_up(onboarding: Onboarding):
    onboarding.refresh_from_db()
    steps = normalised(onboarding.provisioning_steps)
    lines = StepLog.objects.filter(onboarding=onboarding, attempt__gt=0).values_list("step", "attempt", "message")
    started, ended = Counter(), Counter()
    for step, attempt, message in lines:
        (started if STARTED.match(message) else ended)[(step, attempt)] += 1
    for name in STEP_NAMES:
        n = steps[name]["attempts"]
        want = Counter({(name, a): 1 for a in range(1, n + 1)})
        got_started = Counter({k: v for k, v in started.items() if k[0] == name})
        got_ended = Counter({k: v for k, v in ended.items() if k[0] == name})
        assert got_started == want, f"{onboarding.tenant.slug} {name}: {n} attempts, started lines {got_started}"
        assert got_ended == want, f"{onboarding.tenant.slug} {name}: {n} attempts, end lines {got_ended}"


def engine_duplicates(tenants, site: str = "sandbox") -> list[str]:
    """What the engine holds more than once for these tenants. Names are the engine's primary key (unique by
    construction); User Permissions have random names, so: exactly one per user and company; and a company
    appears at most once in a fiscal year's companies table."""
    problems = []
    permissions = Counter(
        (d.get("user"), d.get("allow"), d.get("for_value"))
        for d in SandboxDocument.objects.filter(site=site, doctype="User Permission").values_list("data", flat=True)
    )
    for tenant in tenants:
        key = (tenant.admin_email, "Company", tenant.company_name)
        if permissions[key] != 1:
            problems.append(f"{tenant.slug}: {permissions[key]} User Permissions for {key}")
    for year in SandboxDocument.objects.filter(site=site, doctype="Fiscal Year").values_list("data", flat=True):
        counts = Counter(row.get("company") for row in year.get("companies") or [])
        problems += [f"Fiscal Year {year.get('name')}: {c} listed {n} times" for c, n in counts.items() if n > 1]
    companies = Counter(
        SandboxDocument.objects.filter(site=site, doctype="Company").values_list("data__abbr", flat=True)
    )
    problems += [f"abbr {abbr} on {n} companies" for abbr, n in companies.items() if n > 1]
    return problems


def terminate_backends(application_name: str) -> int:
    """``pg_terminate_backend`` on the sessions of this test database opened by the given application (the
    workers' connections). Never the test process's own session, never another database."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name = %s AND pid <> pg_backend_pid()",
            [application_name],
        )
        return cursor.fetchone()[0]


def worker_database_url(application_name: str) -> str:
    return f"{workers.worker_database_url()}?application_name={application_name}"


def confirmed_by_engine(onboarding) -> list[str]:
    """The steps shown completed whose look still finds something missing in the engine (must be none)."""
    from provisioning.engines import engine_for
    from provisioning.steps import STEP_BY_NAME, StepContext, TenantSpec
    from tenants.models import Tenant

    tenant = Tenant.objects.select_related("engine").get(pk=onboarding.tenant_id)
    ctx = StepContext(engine=engine_for(tenant.engine), spec=TenantSpec.from_tenant(tenant))
    onboarding.refresh_from_db()
    wrong = []
    for name, entry in normalised(onboarding.provisioning_steps).items():
        if entry["status"] == "completed" and name != STEP_NAMES[-1]:
            look = STEP_BY_NAME[name].look(ctx)
            if look.changes:
                wrong.append(f"{name}: " + "; ".join(c.describe() for c in look.changes))
    return wrong


class DeadStepWatch:
    """Polls, every half second, for steps shown running whose lease no live session holds (the sweeper's own
    evidence), and keeps the longest time any one attempt stood so: how long the status lied."""

    def __init__(self):
        import threading

        self.longest = 0.0
        self._seen: dict = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)

    def _run(self):
        from provisioning.locks import step_lease_key
        from provisioning.recovery import active_runs, held_lease_keys

        try:
            while not self._stop.wait(0.5):
                now = time.monotonic()
                pairs = active_runs()
                held = held_lease_keys()
                dead = set()
                for onboarding, run in pairs:
                    for name, entry in normalised(onboarding.provisioning_steps).items():
                        if entry["status"] == "running" and step_lease_key(run.id, name) not in held:
                            dead.add((onboarding.pk, run.id, name, entry["attempts"]))
                for key in dead:
                    self._seen.setdefault(key, now)
                for key in list(self._seen):
                    self.longest = max(self.longest, now - self._seen[key])
                    if key not in dead:
                        del self._seen[key]
        finally:
            connection.close()
