"""/metrics: Prometheus text computed from the database at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from provisioning.models import SandboxFault
from provisioning.services import onboarding_continue, onboarding_start
from provisioning.steps import STEP_NAMES
from tests.support.factories import make_tenant

pytestmark = pytest.mark.django_db


def scrape(client, **headers) -> dict:
    """{(sample name, frozenset(labels)): value} of one scrape."""
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.content.decode())
        for s in family.samples
    }


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_it_counts_what_a_run_did(client, eager, on_commit):
    # given
    before = scrape(client)
    tenant = make_tenant()
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    # then
    after = scrape(client)
    assert (
        value(after, "moran_onboardings", status="COMPLETED")
        == value(before, "moran_onboardings", status="COMPLETED") + 1
    )
    assert value(after, "moran_provisioning_runs_started_total", kind="start") == (
        value(before, "moran_provisioning_runs_started_total", kind="start") + 1
    )
    assert value(after, "moran_provisioning_runs_ended_total", outcome="completed") == (
        value(before, "moran_provisioning_runs_ended_total", outcome="completed") + 1
    )
    for step in STEP_NAMES:
        # one more finished attempt of every step, with a duration
        assert value(after, "moran_step_duration_seconds_count", step=step) == (
            value(before, "moran_step_duration_seconds_count", step=step) + 1
        )
        assert value(after, "moran_step_duration_seconds_bucket", step=step, le="+Inf") == value(
            after, "moran_step_duration_seconds_count", step=step
        )
        assert value(after, "moran_step_duration_seconds_sum", step=step) > value(
            before, "moran_step_duration_seconds_sum", step=step
        )
        assert value(after, "moran_onboarding_steps", step=step, status="completed") >= 1


def test_it_counts_failures_by_step_and_runs_by_kind(client, eager, on_commit):
    # given: a tenant whose step 4 fails once
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_4_cost_centers", kind=SandboxFault.Kind.PERMANENT)
    before = scrape(client)
    # when
    on_commit(onboarding_start, onboarding=tenant.onboarding)
    middle = scrape(client)
    on_commit(onboarding_continue, onboarding=tenant.onboarding)
    after = scrape(client)
    # then
    failed = ("moran_step_failures_total", {"step": "step_4_cost_centers", "outcome": "failed"})
    assert value(middle, failed[0], **failed[1]) == value(before, failed[0], **failed[1]) + 1
    assert (
        value(middle, "moran_onboardings", status="PARTIAL") == value(before, "moran_onboardings", status="PARTIAL") + 1
    )
    assert value(middle, "moran_onboarding_steps", step="step_4_cost_centers", status="failed") >= 1
    assert value(after, "moran_provisioning_runs_started_total", kind="continue") == (
        value(before, "moran_provisioning_runs_started_total", kind="continue") + 1
    )
    assert value(after, "moran_onboardings", status="PARTIAL") == value(before, "moran_onboardings", status="PARTIAL")
    assert value(after, "moran_provisioning_runs_ended_total", outcome="stopped") == (
        value(before, "moran_provisioning_runs_ended_total", outcome="stopped") + 1
    )


def test_every_status_and_kind_is_present_at_zero(client):
    samples = scrape(client)
    for status in ("PENDING", "IN_PROGRESS", "COMPLETED", "PARTIAL", "FAILED", "CANCELLED"):
        assert ("moran_onboardings", frozenset({("status", status)})) in samples
    for kind in ("start", "continue", "retry"):
        assert ("moran_provisioning_runs_started_total", frozenset({("kind", kind)})) in samples


def test_it_asks_for_the_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "scrape-me"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert scrape(client, HTTP_AUTHORIZATION="Bearer scrape-me")


def test_it_speaks_openmetrics_when_asked(client):
    response = client.get("/metrics", HTTP_ACCEPT="application/openmetrics-text; version=1.0.0")
    assert response["Content-Type"].startswith("application/openmetrics-text")
    assert response.content.decode().rstrip().endswith("# EOF")
