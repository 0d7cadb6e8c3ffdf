"""The real path: PostgreSQL, the broker and a real Celery worker process started by the test session."""

import pytest

from provisioning.models import OnboardingStatus, SandboxDocument
from provisioning.services import onboarding_start
from provisioning.steps import STEP_NAMES
from tests.conftest import wait_for_status
from tests.factories import make_tenant

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


def engine_docs(site="sandbox"):
    return {(d, n) for d, n in SandboxDocument.objects.filter(site=site).values_list("doctype", "name")}


def test_it_provisions_a_tenant_to_completed(worker):
    # given
    tenant = make_tenant()
    # when
    onboarding_start(onboarding=tenant.onboarding)
    # then
    onboarding = wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    assert (onboarding.steps_completed, onboarding.progress, onboarding.current_step) == (10, 100, None)
    assert all(onboarding.provisioning_steps[name]["attempts"] == 1 for name in STEP_NAMES)
    assert ("Company", tenant.company_name) in engine_docs()
    assert ("Cost Center", f"Operations - {tenant.abbr}") in engine_docs()
    tenant.refresh_from_db()
    assert tenant.status == "active"
