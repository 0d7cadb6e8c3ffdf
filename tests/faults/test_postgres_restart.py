"""A real PostgreSQL restart mid-run, on a cluster of the test's own (the machine's shared server is never touched):
real workers and a real beat with the production defaults, on the session's broker kind (a Redis of the test's own,
or the RabbitMQ the session runs on). The postmaster is stopped without a clean shutdown (``pg_ctl restart -m
immediate``: every session ends at once, crash recovery at start): the workers reconnect, every tenant ends
COMPLETED without an operator, nothing twice in the engine, every attempt accounted for."""

from __future__ import annotations

import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection
from django.utils import timezone

from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault
from provisioning.recovery import SWEEPER
from provisioning.services import onboarding_start
from tests.support import private_pg
from tests.support.factories import make_tenant
from tests.support.faultkit import (
    assert_attempts_add_up,
    broker,
    confirmed_by_engine,
    engine_duplicates,
    fault_broker,
    running_step,
    wait_all,
    wait_for,
    wait_moving,
)
from tests.support.workers import ROOT, BeatProcess, WorkerProcess

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

_UNAVAILABLE = private_pg.unavailable()
if _UNAVAILABLE and os.environ.get("CI") == "true":
    raise pytest.UsageError(f"CI must run the PostgreSQL restart test, and {_UNAVAILABLE}")
if _UNAVAILABLE:
    pytestmark.append(pytest.mark.skip(reason=_UNAVAILABLE))

APP_NAME = "moran-pg-restart-worker"
DATABASE = "moran"
IN_FLIGHT = 12
BOUND = 60.0  # seconds after the restart by which every tenant has ended COMPLETED


@pytest.fixture(scope="module")
def server():
    server = private_pg.PrivatePostgres()
    try:
        yield server.init().start().create_database(DATABASE)
    finally:
        server.close()


@pytest.fixture
def lab(server, settings, django_db_blocker):
    """Two workers and a beat on the private cluster (127.0.0.1), a queue of their own; this test process reads
    and enqueues there too."""
    broker_server = fault_broker()
    queue = f"pgrestart-{uuid.uuid4().hex[:10]}"
    settings.PROVISIONING_QUEUE = queue
    env = {"CELERY_BROKER_URL": broker_server.url, "DATABASE_URL": server.url(DATABASE, application_name=APP_NAME)}
    logs = ROOT / "var" / "test-logs"
    processes = [WorkerProcess(queue, env=env, log_path=logs / f"worker-{queue}-{n}.log") for n in range(2)] + [
        BeatProcess(queue, env=env, log_path=logs / f"beat-{queue}.log")
    ]
    try:
        with django_db_blocker.unblock(), private_pg.django_connection_to(server, DATABASE), broker(broker_server.url):
            with ThreadPoolExecutor() as pool:  # the workers start side by side: each takes seconds to boot
                list(pool.map(lambda process: process.start(), processes))
            yield server
    finally:
        for process in processes:
            process.kill()
        broker_server.close()


def test_a_real_postgres_restart_mid_run_ends_with_every_tenant_completed_once(lab):
    # given twelve tenants in flight on two workers, beat running the sweeper on its default interval
    tenants = [make_tenant() for _ in range(IN_FLIGHT)]
    for tenant in tenants:
        SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=80)
        onboarding_start(onboarding=tenant.onboarding)
    wait_for(lambda: running_step(tenants[0].onboarding.pk), timeout=60, interval=0.05, message="a running step")
    # when PostgreSQL itself restarts (immediate mode: no clean shutdown, every session ends at once)
    restarted_at, started = timezone.now(), time.monotonic()
    lab.restart("immediate")
    back_after = time.monotonic() - started
    connection.close()  # this process's session ended with the server too
    # then the workers reconnect, every tenant moves again and ends COMPLETED without an operator, within the bound
    ids = [t.onboarding.pk for t in tenants]
    wait_moving(ids, restarted_at, timeout=BOUND)
    moving_after = time.monotonic() - started
    wait_all(ids, {OnboardingStatus.COMPLETED}, timeout=max(BOUND - (time.monotonic() - started), 1))
    completed_after = time.monotonic() - started
    print(
        f"PG-RESTART server back after {back_after:.1f} s; every tenant moving after {moving_after:.1f} s,"
        f" all {IN_FLIGHT} COMPLETED after {completed_after:.1f} s"
    )
    # and nothing needed an operator, nothing happened twice in the engine, every attempt adds up
    assert not ProvisioningRun.objects.filter(onboarding__tenant__in=tenants).exclude(requested_by__in=["", SWEEPER])
    for tenant in tenants:
        assert_attempts_add_up(tenant.onboarding)
        assert confirmed_by_engine(tenant.onboarding) == []
    assert engine_duplicates(tenants) == []
