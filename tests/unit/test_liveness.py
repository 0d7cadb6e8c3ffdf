"""The sweeper's liveness evidence (provisioning.recovery), on the real database: a running step whose lease no live
session holds, a chain whose next message was overtaken in the queue, a message merely queued behind others, and
the cost of a pass. A worker's death is simulated by a step that never ends; the fault tests kill real workers."""

from __future__ import annotations

import datetime as dt
import threading

import pytest
from django.db import connection
from django.utils import timezone

from provisioning import execution, runs
from provisioning.execution import step_execute
from provisioning.locks import step_lease
from provisioning.models import Onboarding, ProvisioningRun
from provisioning.recovery import sweep
from provisioning.runs import onboarding_start
from provisioning.state import normalised
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


class WorkerDied(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing records it."""


@pytest.fixture(autouse=True)
def lost_broker(monkeypatch):
    """Runs reach the broker (enqueued_at set), but nothing runs them: the test plays the workers."""

    def run_enqueue(*, run_id):
        ProvisioningRun.objects.filter(pk=run_id).update(enqueued_at=timezone.now())
        return True

    monkeypatch.setattr(runs, "run_enqueue", run_enqueue)


def later(seconds: float) -> dt.datetime:
    return timezone.now() + dt.timedelta(seconds=seconds)


def started(upto: int, *, dies_in: str | None = None, monkeypatch=None):
    """A tenant whose run completed steps 0..upto-1 (and, with ``dies_in``, whose worker died in that step)."""
    tenant = make_tenant()
    onboarding_start(onboarding=tenant.onboarding)
    tenant.onboarding.refresh_from_db()
    run_id = str(tenant.onboarding.run_id)
    for name in STEP_NAMES[:upto]:
        step_execute(onboarding_id=tenant.onboarding.pk, run_id=run_id, step_name=name, retries=0, max_retries=3)
    if dies_in:

        def dies(step, ctx):
            raise WorkerDied()

        with monkeypatch.context() as m, pytest.raises(WorkerDied):
            m.setattr(execution, "execute", dies)
            step_execute(onboarding_id=tenant.onboarding.pk, run_id=run_id, step_name=dies_in, retries=0, max_retries=3)
    tenant.onboarding.refresh_from_db()
    return tenant


def moved_back(tenant, seconds: float):
    """Shift the tenant's recorded times back, as if its chain had moved on ``seconds`` ago."""
    onboarding = Onboarding.objects.get(pk=tenant.onboarding.pk)
    steps = normalised(onboarding.provisioning_steps)
    for entry in steps.values():
        for key in ("started_at", "finished_at"):
            if entry[key]:
                stamp = dt.datetime.fromisoformat(entry[key].replace("Z", "+00:00")) - dt.timedelta(seconds=seconds)
                entry[key] = stamp.isoformat().replace("+00:00", "Z")
    back = timezone.now() - dt.timedelta(seconds=seconds)
    Onboarding.objects.filter(pk=onboarding.pk).update(provisioning_steps=steps, updated_at=back)
    ProvisioningRun.objects.filter(pk=onboarding.run_id).update(created_at=back, enqueued_at=back)


@pytest.fixture
def lease_held():
    """A live session holding a step's lease, in a thread (its worker is alive, executing the step)."""
    holding, release, threads = threading.Event(), threading.Event(), []

    def hold(run_id, step):
        def run():
            with step_lease(run_id, step) as held:
                assert held
                holding.set()
                release.wait(30)
            connection.close()

        thread = threading.Thread(target=run)
        thread.start()
        threads.append(thread)
        assert holding.wait(10)

    yield hold
    release.set()
    for thread in threads:
        thread.join()


def test_it_resumes_a_running_step_whose_lease_no_session_holds(monkeypatch, settings):
    # given a step shown running whose worker died (its session, and the lease, went with it)
    tenant = started(3, dies_in=STEP_NAMES[3], monkeypatch=monkeypatch)
    # when the sweeper passes within the liveness grace, then after it
    early = sweep(now=later(settings.SWEEP_LIVENESS_GRACE - 2))
    actions = sweep(now=later(settings.SWEEP_LIVENESS_GRACE + 1))
    # then it is resumed from that step after the grace, long before any deadline
    assert early == []
    assert [(a.action, a.problem) for a in actions] == [("resumed", "dead")]
    run = ProvisioningRun.objects.filter(onboarding=tenant.onboarding).first()
    assert STEP_NAMES[run.start_index] == STEP_NAMES[3]


def test_it_leaves_a_running_step_whose_lease_a_live_session_holds(monkeypatch, settings, lease_held):
    # given a step shown running whose lease a live session holds (a slow step, not a dead one)
    tenant = started(3, dies_in=STEP_NAMES[3], monkeypatch=monkeypatch)
    lease_held(tenant.onboarding.run_id, STEP_NAMES[3])
    # when
    actions = sweep(now=later(settings.SWEEP_LIVENESS_GRACE + 30))
    # then
    assert actions == []
    assert Onboarding.objects.get(pk=tenant.onboarding.pk).run_id == tenant.onboarding.run_id


def test_it_resumes_a_chain_whose_next_message_was_overtaken(settings):
    # given a tenant whose step 2 ended 30 s ago and whose step 3 never began, and another tenant whose steps, sent
    # after that, were taken and begun by workers
    lost = started(3)
    moved_back(lost, 30)
    started(2)
    # when the sweeper passes once the other tenant's step began more than the pickup grace ago
    actions = sweep(now=later(settings.SWEEP_PICKUP_GRACE + 1))
    # then the first tenant's message is taken for lost (the queue is first in, first out) and resumed from step 3
    assert [(a.tenant, a.action, a.problem) for a in actions] == [(lost.slug, "resumed", "lost")]
    run = ProvisioningRun.objects.filter(onboarding=lost.onboarding).first()
    assert STEP_NAMES[run.start_index] == STEP_NAMES[3]


def test_it_leaves_a_message_merely_queued_behind_a_busy_worker(settings, lease_held, monkeypatch):
    # given a tenant whose next message waits in the queue (nothing sent after it was taken), and a worker busy
    # with another tenant's step that began before it
    busy = started(1, dies_in=STEP_NAMES[1], monkeypatch=monkeypatch)
    lease_held(busy.onboarding.run_id, STEP_NAMES[1])
    moved_back(busy, 60)
    queued = started(3)
    # when the sweeper passes long after the idle grace, within the backstop
    actions = sweep(now=later(settings.SWEEP_IDLE_GRACE * 3))
    # then neither is touched
    assert actions == []
    assert ProvisioningRun.objects.filter(onboarding=queued.onboarding).count() == 1


def test_a_pass_costs_the_same_queries_for_one_run_or_many(django_assert_max_num_queries):
    # given five runs in flight, none with a problem
    for _ in range(5):
        started(2)
    # when / then: the active rows (with their tenants), their runs, the held leases
    with django_assert_max_num_queries(3):
        assert sweep() == []


def test_the_database_sessions_have_bounded_keepalives(settings):
    # given the production settings' connection options
    # when a session asks the server what it was told
    with connection.cursor() as cursor:
        cursor.execute("SHOW tcp_keepalives_idle")
        idle = cursor.fetchone()[0]
        cursor.execute("SHOW tcp_keepalives_count")
        count = cursor.fetchone()[0]
        # keepalives probe only an idle socket; unacknowledged data is bounded by the server's tcp_user_timeout
        cursor.execute("SELECT setting::int FROM pg_settings WHERE name = 'tcp_user_timeout'")
        server_user_timeout = cursor.fetchone()[0]
    # then a peer that stops answering is given up within about thirty seconds on the server's side too
    options = settings.DATABASES["default"]["OPTIONS"]
    assert options["keepalives"] == 1 and options["tcp_user_timeout"] <= 30_000
    assert (int(idle), int(count)) == (settings.DB_KEEPALIVE_IDLE, settings.DB_KEEPALIVE_COUNT)
    assert 0 < server_user_timeout <= 30_000
