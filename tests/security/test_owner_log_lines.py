"""Owners read their tenant's log lines without their operators' emails: a role instead; staff still see who."""

from __future__ import annotations

import pytest

from provisioning.services import onboarding_cancel, onboarding_start

pytestmark = pytest.mark.django_db


def log_messages(client, tenant):
    response = client.get(f"/api/provisioning/tenants/{tenant.slug}/logs")
    assert response.status_code == 200
    return [line["message"] for line in response.json()["results"]]


def test_an_owner_sees_a_role_where_staff_see_the_operators_email(operator, owner, acme, client_for):
    # given: an operator started the run (its enqueue waits for a commit that never comes in this test) and another (in the admin) cancelled it
    onboarding_start(onboarding=acme.onboarding, requested_by=operator.email)
    acme.onboarding.refresh_from_db()
    onboarding_cancel(onboarding=acme.onboarding, requested_by="admin:ops-lead")
    # when
    as_owner = log_messages(client_for(owner), acme)
    as_staff = log_messages(client_for(operator), acme)
    # then
    assert not any(operator.email in m or "ops-lead" in m for m in as_owner)
    assert "start requested by an operator: a new run starts" in as_owner
    assert "run cancelled by an operator" in as_owner
    assert f"start requested by {operator.email}: a new run starts" in as_staff
    assert "run cancelled by admin:ops-lead" in as_staff


def test_an_owner_sees_their_own_name(owner, acme, client_for):
    onboarding_start(onboarding=acme.onboarding, requested_by=owner.email)
    assert f"start requested by {owner.email}: a new run starts" in log_messages(client_for(owner), acme)
