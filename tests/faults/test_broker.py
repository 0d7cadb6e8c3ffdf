"""Redis restarted mid-run, with messages in flight: a Redis of the test's own (never the machine's shared one),
keeping nothing on disk, so a restart loses every queued and unacknowledged message — the worst case. The workers
reconnect by themselves; runs whose next message was lost are resumed by the sweeper; nothing is done twice."""

from __future__ import annotations

import uuid

import pytest

from provisioning.models import OnboardingStatus, SandboxFault
from provisioning.recovery import sweep
from provisioning.services import onboarding_start
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    RedisServer,
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    wait_all,
    wait_for,
    worker_database_url,
)
from tests.support.workers import ROOT, WorkerProcess

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


def test_a_redis_restart_mid_run_ends_with_every_run_completed_once(redis_server, settings):
    # given two workers on a private Redis, and five runs in progress
    queue = f"fault-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    # The sweeper of this test: a run with nothing in flight for 8 s is stalled (a step takes about a second).
    settings.SWEEP_STALL_DEADLINE = 8
    settings.SWEEP_STEP_DEADLINE = 30
    settings.SWEEP_ENQUEUE_GRACE = 8
    env = {
        "CELERY_BROKER_URL": redis_server.url,
        "DATABASE_URL": worker_database_url("moran-fault-broker"),
        "MORAN_VISIBILITY_TIMEOUT": "10",
        "MORAN_STEP_MAX_RETRIES": "10",
    }
    workers = [
        WorkerProcess(queue, env=env, log_path=ROOT / "var" / "test-logs" / f"worker-{queue}-{i}.log").start()
        for i in range(2)
    ]
    tenants = []
    try:
        with broker(redis_server.url):
            for _ in range(5):
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
            redis_server.restart(down_for=2)
            swept = []
            # then the workers reconnect, and with the sweeper passing every few seconds every run completes
            wait_all(
                [t.onboarding.pk for t in tenants],
                {OnboardingStatus.COMPLETED},
                timeout=300,
                tick=lambda: swept.extend(sweep()),
            )
    finally:
        for worker in workers:
            worker.kill()
    print(f"sweeper actions after the restart: {[str(a) for a in swept]}")
    for tenant in tenants:
        assert_attempts_add_up(tenant.onboarding)
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []
