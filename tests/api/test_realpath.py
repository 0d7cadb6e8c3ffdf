"""continue / retry / cancel through the API with a real worker, and twenty concurrent continues on one tenant.

PostgreSQL, the broker and the session's Celery worker process; what the tests write is committed (transaction=True),
so the worker and the live server's threads see it."""

import threading
import time

import pytest
import requests

from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault
from provisioning.services import onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.workers import wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

BASE = "/api/provisioning/tenants"


def partial_tenant(tenant, step="step_4_cost_centers"):
    """Provision with a permanent failure at ``step`` (once): the tenant ends PARTIAL."""
    SandboxFault.objects.create(tenant=tenant, step=step, kind=SandboxFault.Kind.PERMANENT, remaining=1)
    onboarding_start(onboarding=tenant.onboarding, requested_by="test")
    return wait_for_status(tenant.onboarding, OnboardingStatus.PARTIAL)


def test_it_continues_a_partial_tenant_to_completed(worker, operator, acme, client_for):
    # given
    partial_tenant(acme)
    client = client_for(operator)
    # when
    response = client.post(f"{BASE}/acme/continue")
    # then: 202 with the status of the new run, then the run ends COMPLETED
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "IN_PROGRESS" and body["run_id"] is not None
    assert body["steps_completed"] >= 4
    wait_for_status(acme.onboarding, OnboardingStatus.COMPLETED)
    status = client.get(f"{BASE}/acme/status").json()
    assert (status["status"], status["steps_completed"], status["progress"], status["current_step"]) == (
        "COMPLETED",
        10,
        100,
        None,
    )
    assert status["errors"] == []
    # the steps before the failed one were not run again
    attempts = {step["name"]: step["attempts"] for step in status["steps"]}
    assert attempts["step_0_engine_check"] == 1 and attempts["step_4_cost_centers"] == 2
    # and the run's lines are in the logs, newest last
    lines = client.get(f"{BASE}/acme/logs?run={body['run_id']}&page_size=1000").json()["results"]
    assert lines[-1]["step"] == "step_9_finalize" and lines[-1]["message"].startswith("completed")


def test_it_retries_every_step_of_a_completed_tenant(worker, operator, acme, client_for):
    # given
    onboarding_start(onboarding=acme.onboarding)
    wait_for_status(acme.onboarding, OnboardingStatus.COMPLETED)
    client = client_for(operator)
    # when
    response = client.post(f"{BASE}/{acme.id}/retry")
    # then
    assert response.status_code == 202
    assert response.json()["status"] == "IN_PROGRESS"
    wait_for_status(acme.onboarding, OnboardingStatus.COMPLETED)
    status = client.get(f"{BASE}/acme/status").json()
    assert status["status"] == "COMPLETED"
    assert all(step["attempts"] == 2 for step in status["steps"])
    assert ProvisioningRun.objects.filter(onboarding=acme.onboarding, kind="retry", outcome="completed").count() == 1


def test_it_cancels_a_run_and_continue_resumes_it(worker, operator, acme, client_for):
    # given: a slow engine, and a run that has started
    SandboxFault.objects.create(tenant=acme, kind=SandboxFault.Kind.LATENCY, latency_ms=400)
    client = client_for(operator)
    onboarding_start(onboarding=acme.onboarding)
    deadline = time.monotonic() + 60
    while client.get(f"{BASE}/acme/status").json()["steps_completed"] < 1:
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.1)
    # when
    response = client.post(f"{BASE}/acme/cancel")
    # then: CANCELLED at once, and it stays so: the rest of the chain does not run
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["run_id"]) == ("CANCELLED", None)
    time.sleep(3)
    later = client.get(f"{BASE}/acme/status").json()
    assert later["status"] == "CANCELLED"
    assert later["steps"][-1] == {**later["steps"][-1], "status": "pending", "attempts": 0}
    assert ProvisioningRun.objects.get(onboarding=acme.onboarding).outcome == "cancelled"
    # and continue resumes it to the end
    SandboxFault.objects.filter(tenant=acme).delete()
    assert client.post(f"{BASE}/acme/continue").status_code == 202
    wait_for_status(acme.onboarding, OnboardingStatus.COMPLETED)
    assert client.get(f"{BASE}/acme/status").json()["steps_completed"] == len(STEP_NAMES)


def test_it_starts_exactly_one_run_for_twenty_concurrent_continues(worker, operator, acme, live_server, client_for):
    # given: a PARTIAL tenant, and twenty operators' clicks ready to go at once
    partial_tenant(acme)
    # The run these clicks start must still be active when the last click lands, however slow the machine.
    SandboxFault.objects.create(tenant=acme, kind="latency", latency_ms=300)
    token = client_for(operator).token
    barrier = threading.Barrier(20)
    statuses, bodies = [], []

    def click():
        barrier.wait()
        response = requests.post(
            f"{live_server.url}{BASE}/acme/continue", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        statuses.append(response.status_code)
        bodies.append(response.json())

    threads = [threading.Thread(target=click) for _ in range(20)]
    # when
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    # then: one run, nineteen conflicts
    assert sorted(statuses) == [202] + [409] * 19
    assert sorted(body["error"] for body in bodies if "error" in body) == ["run_active"] * 19
    assert ProvisioningRun.objects.filter(onboarding=acme.onboarding, kind="continue").count() == 1
    assert ProvisioningRun.objects.filter(onboarding=acme.onboarding).count() == 2  # the start, and that one
    SandboxFault.objects.filter(tenant=acme, kind="latency").delete()
    wait_for_status(acme.onboarding, OnboardingStatus.COMPLETED, timeout=120)
