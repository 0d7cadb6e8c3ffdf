"""Redis restarted mid-run, with messages in flight: a Redis of the test's own (never the machine's shared one),
keeping nothing on disk, so a restart loses every queued and unacknowledged message — the worst case. Production
defaults and a real beat: the workers reconnect by themselves; the sweeper finds the chains whose next message was
lost (messages sent after theirs were taken, or nothing moves at all) within seconds; nothing is done twice.

RabbitMQ is the machine's own and is not restarted by a test: on a RabbitMQ session this test is skipped."""

from __future__ import annotations

import uuid

import pytest
from django.utils import timezone

from provisioning.models import OnboardingStatus, SandboxFault
from provisioning.services import onboarding_start
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    fault_broker,
    recovery_bound,
    wait_all,
    wait_for,
    wait_moving,
    worker_database_url,
)
from tests.support.workers import ROOT, BeatProcess, WorkerProcess

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_server():
    server = fault_broker()
    if server.kind != "redis":
        pytest.skip("the session's broker is the machine's RabbitMQ, which a test does not restart")
    yield server
    server.close()


def test_a_redis_restart_mid_run_ends_with_every_run_completed_once(redis_server, settings):
    # given two workers and beat on a private Redis, and twelve runs in progress
    queue = f"fault-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    env = {
        "CELERY_BROKER_URL": redis_server.url,
        "DATABASE_URL": worker_database_url("moran-fault-broker"),
        "MORAN_STEP_MAX_RETRIES": "10",
    }
    logs = ROOT / "var" / "test-logs"
    processes = [WorkerProcess(queue, env=env, log_path=logs / f"worker-{queue}-{i}.log").start() for i in range(2)]
    processes.append(BeatProcess(queue, env=env, log_path=logs / f"beat-{queue}.log").start())
    tenants = []
    try:
        with broker(redis_server.url):
            for _ in range(12):
                tenant = make_tenant()
                SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=60)
                onboarding_start(onboarding=tenant.onboarding)
                tenants.append(tenant)
            wait_for(
                lambda: sum(t.onboarding.__class__.objects.get(pk=t.onboarding.pk).steps_completed for t in tenants)
                >= 5,
                timeout=120,
                message="some steps completed",
            )
            # when Redis is restarted (down for two seconds), losing every message it held
            restarted_at = timezone.now()
            redis_server.restart(down_for=2)
            # then the workers reconnect, every tenant moves again within the bound and completes
            ids = [t.onboarding.pk for t in tenants]
            wait_moving(ids, restarted_at, timeout=recovery_bound("redis"))
            wait_all(ids, {OnboardingStatus.COMPLETED}, timeout=300)
    finally:
        for process in processes:
            process.kill()
    for tenant in tenants:
        assert_attempts_add_up(tenant.onboarding)
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []
