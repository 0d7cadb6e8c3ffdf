"""Two clicks, two operators, the API and the admin at once: one run. Real threads, each with its own database
connection, against PostgreSQL; the runs execute on the session's real worker."""

from __future__ import annotations

import threading

import pytest
from django.db import connection

from moran.errors import RunActive
from provisioning.models import OnboardingStatus, ProvisioningRun, SandboxFault
from provisioning.services import onboarding_cancel, onboarding_continue, onboarding_retry, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant
from tests.support.faultkit import assert_attempts_add_up, engine_duplicates
from tests.support.workers import wait_for_status

pytestmark = [pytest.mark.fault, pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


def at_once(calls: list, timeout: float = 60) -> list:
    """Run the callables in threads released together; returns each one's result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list = [None] * len(calls)

    def run(i, fn):
        try:
            barrier.wait(timeout)
            results[i] = fn()
        except Exception as exc:  # collected, asserted by the test
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i, fn)) for i, fn in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
    return results


def partial_tenant(worker):
    """A tenant whose step 4 failed once (PARTIAL 4/10)."""
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step=STEP_NAMES[4], kind=SandboxFault.Kind.PERMANENT, remaining=1)
    onboarding_start(onboarding=tenant.onboarding)
    wait_for_status(tenant.onboarding, OnboardingStatus.PARTIAL, timeout=120)
    return tenant


def test_twenty_clicks_on_continue_start_one_run(worker):
    # given
    tenant = partial_tenant(worker)
    # when twenty operators click continue at the same moment
    results = at_once([lambda: onboarding_continue(onboarding=tenant.onboarding, requested_by="op")] * 20)
    # then exactly one run started, the others were told a run is active
    runs = [r for r in results if isinstance(r, ProvisioningRun)]
    refused = [r for r in results if isinstance(r, RunActive)]
    assert (len(runs), len(refused)) == (1, 19), results
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED, timeout=120)
    assert ProvisioningRun.objects.filter(onboarding=onboarding).count() == 2
    assert onboarding.provisioning_steps[STEP_NAMES[4]]["attempts"] == 2
    assert all(onboarding.provisioning_steps[n]["attempts"] == 1 for n in STEP_NAMES if n != STEP_NAMES[4])
    assert_attempts_add_up(onboarding)
    assert engine_duplicates([tenant]) == []


def test_continue_retry_and_cancel_at_once_leave_one_true_state(worker):
    # given
    tenant = partial_tenant(worker)
    ob = tenant.onboarding
    # when the API continues, the admin retries and a second operator continues, all at once
    results = at_once(
        [
            lambda: onboarding_continue(onboarding=ob, requested_by="api"),
            lambda: onboarding_retry(onboarding=ob, requested_by="admin"),
            lambda: onboarding_continue(onboarding=ob, requested_by="cli"),
            lambda: onboarding_retry(onboarding=ob, requested_by="api"),
        ]
    )
    # then one run won
    assert sum(isinstance(r, ProvisioningRun) for r in results) == 1, results
    assert sum(isinstance(r, RunActive) for r in results) == 3, results
    onboarding = wait_for_status(ob, OnboardingStatus.COMPLETED, timeout=120)
    assert_attempts_add_up(onboarding)
    assert engine_duplicates([tenant]) == []


def test_a_cancel_racing_a_continue_ends_in_one_true_state(worker):
    # given a run in progress (slow engine calls)
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, kind=SandboxFault.Kind.LATENCY, latency_ms=50)
    onboarding_start(onboarding=tenant.onboarding)
    # when an operator cancels while another clicks continue
    results = at_once(
        [
            lambda: onboarding_cancel(onboarding=tenant.onboarding, requested_by="a"),
            lambda: onboarding_continue(onboarding=tenant.onboarding, requested_by="b"),
        ]
    )
    # then the cancel won (a run was active) and the continue either came after it (a new run) or before (refused)
    cancelled, continued = results
    assert not isinstance(cancelled, Exception), cancelled
    assert isinstance(continued, ProvisioningRun | RunActive), continued
    onboarding = wait_for_status(
        tenant.onboarding, {OnboardingStatus.COMPLETED, OnboardingStatus.CANCELLED}, timeout=120
    )
    if onboarding.status == OnboardingStatus.CANCELLED:
        onboarding_continue(onboarding=onboarding)
        onboarding = wait_for_status(onboarding, OnboardingStatus.COMPLETED, timeout=120)
    assert ProvisioningRun.objects.filter(onboarding=onboarding, outcome="active").count() == 0
    assert_attempts_add_up(onboarding)
    assert engine_duplicates([tenant]) == []
