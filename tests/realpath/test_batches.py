"""Batches on the real path: PostgreSQL, the broker and a real Celery worker. ``provision_batch`` runs as a
subprocess (as an operator runs it); the API in-process, its runs on the worker."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from django.conf import settings

from provisioning.models import BatchItem, OnboardingStatus, ProvisioningBatch, ProvisioningRun
from tenants.models import Tenant
from tests.support.workers import ROOT, worker_database_url

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]

HEADER = "slug,company,abbr,currency,country,admin_email,cost_centers,warehouses"


def rows_csv(n: int, prefix: str) -> str:
    lines = [HEADER] + [
        f"{prefix}-{i},{prefix.title()} {i} Ltd,{prefix.upper()}{i},EUR,Germany,admin@{prefix}-{i}.test,Operations,"
        for i in range(1, n + 1)
    ]
    return "\n".join(lines) + "\n"


@pytest.fixture
def manage(worker):
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "MORAN_PROVISIONING_QUEUE": worker.queue,
        "CI": "true",  # plain progress lines
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
        )

    return run


def statuses(prefix: str) -> dict[str, str]:
    return dict(Tenant.objects.filter(slug__startswith=f"{prefix}-").values_list("slug", "onboarding__status"))


def max_runs_at_once(prefix: str) -> int:
    """The most runs of these tenants that were active at one moment, from the runs' recorded start and end."""
    events = []
    for started, ended in ProvisioningRun.objects.filter(onboarding__tenant__slug__startswith=f"{prefix}-").values_list(
        "created_at", "finished_at"
    ):
        assert ended is not None
        events += [(started, 1), (ended, -1)]
    level = peak = 0
    for _, step in sorted(events, key=lambda e: (e[0], e[1])):  # an end before a start at the same instant
        level += step
        peak = max(peak, level)
    return peak


def wait_for_batch(batch_id, timeout: float = 300) -> ProvisioningBatch:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = ProvisioningBatch.objects.get(pk=batch_id)
        if batch.finished_at is not None:
            return batch
        time.sleep(0.5)
    raise AssertionError(f"batch {batch_id} did not finish in {timeout} s")


def test_provision_batch_completes_30_tenants_k_at_a_time_and_a_rerun_starts_no_run(manage, tmp_path):
    # given
    path = tmp_path / "thirty.csv"
    path.write_text(rows_csv(30, "rb"))
    # when
    result = manage("provision_batch", str(path), "--concurrency", "4")
    # then
    assert result.returncode == 0, result.stdout + result.stderr
    assert set(statuses("rb").values()) == {OnboardingStatus.COMPLETED}
    assert len(statuses("rb")) == 30
    assert "[30/30] 100 % COMPLETED 30" in result.stdout
    assert max_runs_at_once("rb") <= 4
    runs = ProvisioningRun.objects.count()
    assert runs == 30
    # when: the same file again
    again = manage("provision_batch", str(path))
    # then
    assert again.returncode == 0, again.stdout + again.stderr
    assert ProvisioningRun.objects.count() == runs
    assert set(ProvisioningBatch.objects.first().items.values_list("action", flat=True)) == {BatchItem.Action.LEAVE}


def test_provision_batch_refuses_a_bad_file_and_creates_nothing(manage, tmp_path):
    # given: a bad currency on line 3, a duplicate slug on line 4
    path = tmp_path / "bad.csv"
    path.write_text(
        f"{HEADER}\n"
        "rx-1,Rx 1 Ltd,RX1,EUR,Germany,a@rx.test,,\n"
        "rx-2,Rx 2 Ltd,RX2,EURO,Germany,b@rx.test,,\n"
        "rx-1,Rx 3 Ltd,RX3,EUR,Germany,c@rx.test,,\n"
    )
    # when
    result = manage("provision_batch", str(path))
    # then
    assert result.returncode == 2
    assert "line 3: currency: 'EURO'" in result.stderr
    assert "line 4: slug: slug 'rx-1' is also on line 2" in result.stderr
    assert not Tenant.objects.filter(slug__startswith="rx-").exists()


def test_a_batch_started_with_no_wait_goes_on_without_the_cli(manage, tmp_path):
    # given
    path = tmp_path / "six.csv"
    path.write_text(rows_csv(6, "nw"))
    # when: the command starts two and returns
    result = manage("provision_batch", str(path), "--concurrency", "2", "--no-wait")
    # then: it returned with only the first two started
    assert result.returncode == 0, result.stdout + result.stderr
    assert "started 2;" in result.stdout
    batch = ProvisioningBatch.objects.get()
    # and the runs' ends start the others (no CLI, no beat here: the worker's batch_advance tasks)
    batch = wait_for_batch(batch.pk)
    assert set(statuses("nw").values()) == {OnboardingStatus.COMPLETED}
    assert batch.items.filter(started_at__isnull=True).count() == 0
    assert max_runs_at_once("nw") <= 2
    assert ProvisioningRun.objects.filter(requested_by="cli").count() == 6


def test_the_batch_api_completes_30_tenants_through_the_worker_and_a_second_post_starts_no_run(operator, client_for):
    # given
    client = client_for(operator)
    rows = [
        {
            "slug": f"ra-{i}",
            "company": f"Ra {i} Ltd",
            "abbr": f"RA{i}",
            "currency": "USD",
            "country": "United States",
            "admin_email": f"admin@ra-{i}.test",
        }
        for i in range(1, 31)
    ]
    # when
    response = client.post("/api/tenants/batch?concurrency=5", rows, format="json")
    # then: accepted at once; no client attached, the batch finishes
    assert response.status_code == 202, response.json()
    assert response.json()["finished"] is False
    batch = wait_for_batch(response.json()["id"])
    body = client.get(f"/api/tenants/batch/{batch.pk}").json()
    assert (body["counts"]["COMPLETED"], body["done"], body["progress"], body["failures"]) == (30, 30, 100, [])
    assert max_runs_at_once("ra") <= 5
    runs = ProvisioningRun.objects.count()
    # when: the same rows again
    again = client.post("/api/tenants/batch", rows, format="json")
    # then
    assert again.status_code == 202
    assert again.json()["finished"] is True
    assert ProvisioningRun.objects.count() == runs
    # and a bad list is refused whole
    bad = [rows[0] | {"slug": "ra-new", "abbr": "RANEW", "company": "New"}, rows[1] | {"currency": "EURO"}]
    refused = client.post("/api/tenants/batch", bad, format="json")
    assert refused.status_code == 400
    assert "rows[1]" in refused.json()["fields"]
    assert not Tenant.objects.filter(slug="ra-new").exists()
