"""Workers killed mid-step (SIGKILL of a pool child, of the whole worker), database sessions terminated mid-run and
an engine that goes down: real worker processes on a Redis of the test's own, and after each fault every onboarding
reaches a true end state within a bound, every attempt is accounted for, and the engine holds one of each resource.

Steps are slowed down with sandbox latency faults so that a fault lands in the middle of one."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid

import pytest

from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault, StepLog
from provisioning.recovery import SWEEPER
from provisioning.services import onboarding_continue, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    RedisServer,
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    kill_pool_children,
    running_step,
    terminate_backends,
    wait_all,
    wait_for,
    worker_database_url,
)
from tests.support.workers import ROOT, WorkerProcess, wait_for_status

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

VISIBILITY_TIMEOUT = 6
APP_NAME = "moran-fault-worker"


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def workers(redis_server, settings, django_db_setup):
    """Start workers of this test's own (queue, Redis, short visibility timeout); the test process enqueues there."""
    queue = f"fault-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    started: list[WorkerProcess] = []

    def start(**env) -> WorkerProcess:
        worker = WorkerProcess(
            queue,
            concurrency=int(env.pop("concurrency", 2)),
            env={
                "CELERY_BROKER_URL": redis_server.url,
                "DATABASE_URL": worker_database_url(APP_NAME),
                "MORAN_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
                **{k: str(v) for k, v in env.items()},
            },
            log_path=ROOT / "var" / "test-logs" / f"worker-{queue}-{len(started)}.log",
        )
        started.append(worker)
        return worker.start()

    with broker(redis_server.url):
        yield start
    for worker in started:
        worker.kill()


def slow_tenant(latency_ms=300):
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=latency_ms)
    return tenant


def interrupted_lines(onboarding):
    return StepLog.objects.filter(onboarding=onboarding, message__contains="interrupted").count()


def assert_true_and_whole(tenants):
    for tenant in tenants:
        assert_attempts_add_up(tenant.onboarding)
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []


def test_a_pool_child_killed_mid_step_is_redelivered_and_the_run_finishes(workers):
    # given a run in the middle of a step
    worker = workers(concurrency=1)
    tenant = slow_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    step = wait_for(lambda: running_step(tenant.onboarding.pk), timeout=60, interval=0.05, message="a running step")
    time.sleep(0.1)
    # when the pool process running it is killed
    assert kill_pool_children(worker) == 1
    # then its message comes back at once (reject_on_worker_lost) and the run finishes by itself
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=180)
    entry = onboarding.provisioning_steps[step]
    assert entry["attempts"] >= 2 and entry["status"] == "completed"
    assert interrupted_lines(onboarding) >= 1
    assert ProvisioningRun.objects.filter(onboarding=onboarding).count() == 1
    assert_true_and_whole([tenant])


def test_a_whole_worker_killed_mid_step_loses_nothing_once_a_worker_is_back(workers):
    # given two runs in the middle of their steps
    first = workers()
    tenants = [slow_tenant(), slow_tenant()]
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    wait_for(lambda: running_step(tenants[0].onboarding.pk), timeout=60, interval=0.05, message="a running step")
    time.sleep(0.3)
    # when the whole worker is SIGKILLed, and a worker comes back after the visibility timeout
    first.kill()
    time.sleep(VISIBILITY_TIMEOUT + 1)
    workers()
    # then the unacknowledged messages come back (restored at the worker's start) and both runs finish by themselves
    wait_all([t.onboarding.pk for t in tenants], {OnboardingStatus.COMPLETED}, timeout=240)
    assert sum(interrupted_lines(t.onboarding) for t in tenants) >= 1
    assert ProvisioningRun.objects.filter(onboarding__tenant__in=tenants).count() == 2  # the same runs finished
    assert_true_and_whole(tenants)


def test_the_sweeper_resumes_a_run_whose_message_never_comes_back(workers, redis_server, settings):
    # given a worker killed mid-step, and its message not coming back (a visibility timeout of an hour)
    first = workers()
    tenant = slow_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    step = wait_for(lambda: running_step(tenant.onboarding.pk), timeout=60, interval=0.05, message="a running step")
    first.kill()
    workers(MORAN_VISIBILITY_TIMEOUT=3600)
    time.sleep(3)
    assert running_step(tenant.onboarding.pk) == step
    # when the sweeper passes (a real `manage.py sweep_provisioning` process, with a short deadline)
    out = subprocess.run(
        [sys.executable, "manage.py", "sweep_provisioning"],
        cwd=ROOT,
        env={
            **WorkerProcess("x").env(),
            "CELERY_BROKER_URL": redis_server.url,
            "MORAN_PROVISIONING_QUEUE": settings.PROVISIONING_QUEUE,
            "MORAN_SWEEP_STEP_DEADLINE": "2",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    # then it resumed the onboarding as a new run from the interrupted step, and the run finishes
    assert f"{tenant.slug}: resumed (stuck)" in out, out
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=180)
    new_run = ProvisioningRun.objects.filter(onboarding=onboarding).first()
    assert (new_run.requested_by, STEP_NAMES[new_run.start_index]) == (SWEEPER, step)
    assert_true_and_whole([tenant])


def test_terminated_database_sessions_cost_a_reconnect_not_a_step(workers):
    # given three runs in progress
    workers(MORAN_STEP_MAX_RETRIES=10)
    tenants = [slow_tenant(80) for _ in range(3)]
    for tenant in tenants:
        onboarding_start(onboarding=tenant.onboarding)
    wait_for(lambda: running_step(tenants[0].onboarding.pk), timeout=60, interval=0.05, message="a running step")
    # when every session of the workers is terminated, again and again (pg_terminate_backend)
    terminated = 0
    for _ in range(5):
        terminated += terminate_backends(APP_NAME)
        time.sleep(1.5)
    assert terminated >= 5
    # then the workers reconnect and every run completes
    wait_all([t.onboarding.pk for t in tenants], {OnboardingStatus.COMPLETED}, timeout=240)
    assert_true_and_whole(tenants)


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
