"""Workers lost mid-step (SIGKILL of a pool child, of the whole worker, a SIGTERM), database sessions terminated
mid-run and an engine that goes down: real worker processes and a real beat, with the production defaults (no
shortened visibility timeout or sweeper deadline), on the session's broker (a Redis of the test's own, or the
RabbitMQ the session runs on). After each fault every tenant moves again within a bound, reaches a true end state,
every attempt is accounted for, and the engine holds one of each resource.

Steps are slowed down with sandbox latency faults so that a fault lands in the middle of one."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
import uuid

import pytest
from django.utils import timezone

from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault, StepLog
from provisioning.recovery import SWEEPER
from provisioning.services import onboarding_continue, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    fault_broker,
    kill_pool_children,
    recovery_bound,
    running_step,
    terminate_backends,
    wait_all,
    wait_for,
    wait_moving,
    worker_database_url,
)
from tests.support.workers import ROOT, BeatProcess, WorkerProcess, wait_for_status

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

APP_NAME = "moran-fault-worker"
IN_FLIGHT = 12


@pytest.fixture(scope="module")
def fault_broker_server():
    server = fault_broker()
    yield server
    server.close()


@pytest.fixture
def cluster(fault_broker_server, settings, django_db_setup):
    """Workers and a beat of this test's own (a queue of its own, the session's broker kind, production defaults);
    the test process enqueues there. ``cluster.worker(**env)`` starts one more worker."""
    queue = f"fault-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    env = {"CELERY_BROKER_URL": fault_broker_server.url, "DATABASE_URL": worker_database_url(APP_NAME)}
    started: list = []

    class Cluster:
        kind = fault_broker_server.kind
        url = fault_broker_server.url
        bound = recovery_bound(fault_broker_server.kind)

        def worker(self, **extra) -> WorkerProcess:
            worker = WorkerProcess(
                queue,
                concurrency=int(extra.pop("concurrency", 2)),
                env={**env, **{k: str(v) for k, v in extra.items()}},
                log_path=ROOT / "var" / "test-logs" / f"worker-{queue}-{len(started)}.log",
            )
            started.append(worker)
            return worker.start()

        def beat(self) -> BeatProcess:
            beat = BeatProcess(queue, env=env, log_path=ROOT / "var" / "test-logs" / f"beat-{queue}.log")
            started.append(beat)
            return beat.start()

    with broker(fault_broker_server.url):
        yield Cluster()
    for process in started:
        process.kill()


@pytest.fixture
def workers(cluster):
    return cluster.worker


def slow_tenant(latency_ms=300):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=latency_ms)
    return tenant


def in_flight(n=IN_FLIGHT, latency_ms=150):
    """``n`` tenants started at once; returns once a step of the first one is running."""
    tenants = [slow_tenant(latency_ms) for _ in range(n)]
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    wait_for(lambda: running_step(tenants[0].onboarding.pk), timeout=60, interval=0.05, message="a running step")
    return tenants


def interrupted_lines(onboarding):
    return StepLog.objects.filter(onboarding=onboarding, message__contains="interrupted").count()


def assert_true_and_whole(tenants):
    for tenant in tenants:
        assert_attempts_add_up(tenant.onboarding)
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []


def recovered(cluster, tenants, since: dt.datetime):
    """Every tenant moves again within the broker's bound, then all end COMPLETED without an operator."""
    ids = [t.onboarding.pk for t in tenants]
    wait_moving(ids, since, timeout=cluster.bound)
    wait_all(ids, {OnboardingStatus.COMPLETED}, timeout=300)
    assert not ProvisioningRun.objects.filter(onboarding__tenant__in=tenants).exclude(requested_by__in=["", SWEEPER])
    assert_true_and_whole(tenants)


def test_a_whole_worker_killed_with_twelve_tenants_in_flight_is_noticed_at_once(cluster):
    # given twelve tenants in flight on one worker, and beat running the sweeper on its default interval
    first = cluster.worker()
    cluster.beat()
    tenants = in_flight()
    # when the whole worker is SIGKILLed (the OOM killer, a lost VM) and a new worker is started
    killed_at = timezone.now()
    first.kill()
    cluster.worker()
    # then every tenant moves again within seconds (the dead steps' leases are free: the sweeper resumes them), and
    # all end COMPLETED with nothing twice in the engine
    recovered(cluster, tenants, killed_at)
    assert sum(interrupted_lines(t.onboarding) for t in tenants) >= 1


def test_a_pool_child_killed_with_twelve_tenants_in_flight_is_redelivered_or_resumed(cluster):
    # given twelve tenants in flight, beat running
    worker = cluster.worker()
    cluster.beat()
    tenants = in_flight()
    # when the pool processes running their steps are SIGKILLed
    killed_at = timezone.now()
    assert kill_pool_children(worker) >= 1
    # then their messages come back at once (reject_on_worker_lost) or the sweeper resumes them, and all finish
    recovered(cluster, tenants, killed_at)
    assert sum(interrupted_lines(t.onboarding) for t in tenants) >= 1


def test_a_sigterm_mid_step_lets_the_step_finish_and_loses_nothing(cluster):
    # given twelve tenants in flight on one worker, beat running
    first = cluster.worker()
    cluster.beat()
    tenants = in_flight()
    step = running_step(tenants[0].onboarding.pk)
    # when the worker is told to stop (SIGTERM to its main process: a deploy, a scale-down) and a new one starts
    stopped_at = timezone.now()
    first.terminate()
    first.proc.wait(timeout=120)
    cluster.worker()
    # then the step it was running finished (a warm shutdown), nothing waited for a visibility timeout
    tenants[0].onboarding.refresh_from_db()
    assert tenants[0].onboarding.provisioning_steps[step]["status"] in ("completed", "retrying")
    recovered(cluster, tenants, stopped_at)


def test_the_sweeper_command_resumes_a_run_whose_worker_is_gone(cluster, settings):
    # given a worker killed mid-step, no beat, and a new worker (the dead step's message does not come back on Redis;
    # on RabbitMQ it does, and the command may find nothing left to do)
    first = cluster.worker()
    tenant = slow_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    step = wait_for(lambda: running_step(tenant.onboarding.pk), timeout=60, interval=0.05, message="a running step")
    first.kill()
    cluster.worker()
    # when the operator's command runs (a real `manage.py sweep_provisioning` process, the production defaults)
    env = {
        **WorkerProcess("x").env(),
        "CELERY_BROKER_URL": cluster.url,
        "MORAN_PROVISIONING_QUEUE": settings.PROVISIONING_QUEUE,
    }

    def sweep_once():
        command = [sys.executable, "manage.py", "sweep_provisioning"]
        out = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=True)
        tenant.onboarding.refresh_from_db()
        return f"{tenant.slug}: resumed (dead)" in out.stdout or running_step(tenant.onboarding.pk) != step

    wait_for(sweep_once, timeout=60, interval=2, message="the dead step resumed")
    # then the onboarding finishes; if the sweeper resumed it, the new run starts at the interrupted step
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=180)
    new_run = ProvisioningRun.objects.filter(onboarding=onboarding).first()
    if new_run.requested_by == SWEEPER:
        assert STEP_NAMES[new_run.start_index] == step
    assert_true_and_whole([tenant])


def test_terminated_database_sessions_cost_a_reconnect_not_a_tenant(cluster):
    # given twelve tenants in flight on two workers, beat running. (A restart of the machine's PostgreSQL would
    # disturb every other session on it: pg_terminate_backend of every worker session stands in for it.)
    cluster.worker(MORAN_STEP_MAX_RETRIES=10)
    cluster.worker(MORAN_STEP_MAX_RETRIES=10)
    cluster.beat()
    tenants = in_flight(latency_ms=80)
    # when every session of the workers is terminated, again and again
    terminated_at = timezone.now()
    terminated = 0
    for _ in range(5):
        terminated += terminate_backends(APP_NAME)
        time.sleep(1.5)  # rounds apart, so that each lands on reconnected sessions
    assert terminated >= 5
    # then the workers reconnect, every tenant moves again and completes
    recovered(cluster, tenants, terminated_at)


def test_an_engine_down_past_the_retry_budget_fails_clearly_and_continue_finishes(workers):
    # given a run in progress
    workers(MORAN_STEP_MAX_RETRIES=3)
    tenant = slow_tenant(60)
    onboarding_start(onboarding=tenant.onboarding)
    wait_for(
        lambda: tenant.onboarding.__class__.objects.get(pk=tenant.onboarding.pk).steps_completed >= 2,
        timeout=120,
        message="two steps completed",
    )
    # when the engine stops answering (503 on every call) for longer than the retries last
    for name in STEP_NAMES:
        SandboxFault.objects.create(tenant=tenant, step=name, kind=SandboxFault.Kind.TRANSIENT, remaining=10_000)
    # then the step fails after its retries with the engine's name and the last error, the run stops PARTIAL
    onboarding = wait_for_status(tenant.onboarding, {OnboardingStatus.PARTIAL}, timeout=180)
    failed = [(n, e) for n, e in onboarding.provisioning_steps.items() if e["status"] == "failed"]
    assert len(failed) == 1, onboarding.provisioning_steps
    name, entry = failed[0]
    assert entry["attempts"] >= 4
    assert entry["error"]["engine_status"] == 503 and entry["error"]["type"] == "EngineUnavailable"
    assert "gave up after" in entry["error"]["message"] and "sandbox engine 'sandbox'" in entry["error"]["message"]
    after = STEP_NAMES[STEP_NAMES.index(name) + 1 :]
    assert all(onboarding.provisioning_steps[n]["status"] == "pending" for n in after)
    assert confirmed_by_engine(onboarding) == []  # nothing shown completed that the engine did not confirm
    # and once the engine is back, continue finishes the onboarding
    SandboxFault.objects.filter(tenant=tenant, kind=SandboxFault.Kind.TRANSIENT).delete()
    onboarding_continue(onboarding=onboarding)
    wait_for_status(onboarding, OnboardingStatus.COMPLETED, timeout=180)
    assert_true_and_whole([tenant])


def test_an_engine_down_for_a_moment_is_ridden_out_by_retries(workers):
    # given an engine that answers 503 twice on one step
    workers(MORAN_STEP_MAX_RETRIES=3)
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step=STEP_NAMES[5], kind=SandboxFault.Kind.TRANSIENT, remaining=2)
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=180)
    assert onboarding.provisioning_steps[STEP_NAMES[5]]["attempts"] == 3
    assert StepLog.objects.filter(onboarding=onboarding, message__startswith="transient error").count() == 2
    assert_true_and_whole([tenant])


def test_an_engine_too_slow_for_the_time_limit_fails_clearly_and_continue_finishes(workers):
    # given an engine that answers every call of this tenant 1.5 s late, and steps with a 2 s soft time limit
    workers(MORAN_STEP_SOFT_TIME_LIMIT=2, MORAN_STEP_TIME_LIMIT=20, MORAN_STEP_MAX_RETRIES=2)
    tenant = slow_tenant(1500)
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then the first step that overruns is retried, then failed with the reason; nothing after it ran
    onboarding = wait_for_status(tenant.onboarding, {OnboardingStatus.FAILED, OnboardingStatus.PARTIAL}, timeout=180)
    failed = [(n, e) for n, e in onboarding.provisioning_steps.items() if e["status"] == "failed"]
    assert len(failed) == 1, onboarding.provisioning_steps
    name, entry = failed[0]
    assert entry["error"]["type"] == "TimeLimitExceeded" and "gave up after 3 attempts" in entry["error"]["message"]
    assert confirmed_by_engine(onboarding) == []
    # and once the engine is fast again, continue finishes
    SandboxFault.objects.filter(tenant=tenant).delete()
    onboarding_continue(onboarding=onboarding)
    wait_for_status(onboarding, OnboardingStatus.COMPLETED, timeout=180)
    assert_true_and_whole([tenant])
