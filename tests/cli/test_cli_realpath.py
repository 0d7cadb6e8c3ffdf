"""The CLI on the real path: manage.py in a subprocess on PostgreSQL + the broker, steps run by the real worker."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from provisioning.models import SandboxDocument
from tests.support.workers import worker_database_url

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def manage(worker):
    env = {
        **os.environ,
        "DATABASE_URL": worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
        "MORAN_PROVISIONING_QUEUE": worker.queue,
    }

    def run(*args):
        return subprocess.run(
            [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )

    return run


def create_args(name, abbr):
    return [
        "--create",
        "--company",
        f"{name} Ltd",
        "--abbr",
        abbr,
        "--currency",
        "USD",
        "--country",
        "United States",
        "--admin-email",
        f"admin@{name.lower()}.test",
        "--cost-center",
        "Operations",
    ]


def steps(manage, slug):
    out = manage("provisioning_status", slug, "--json")
    assert out.returncode == 0, out.stderr
    return {s["name"]: s for s in json.loads(out.stdout)["steps"]}


def test_the_cli_waits_for_the_workers_and_shows_each_step(manage):
    result = manage("provision_tenant", "cli-real", *create_args("Clireal", "CLR"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "COMPLETED 10/10 steps, 100 %" in result.stdout
    assert result.stdout.count(" completed ") == 10


def test_fail_step_then_continue_then_retry_through_the_cli(manage):
    failed = manage(
        "provision_tenant", "cli-fail", *create_args("Clifail", "CLF"), "--fail-step", "step_4_cost_centers"
    )
    assert failed.returncode == 1
    assert "PARTIAL 4/10 steps, 40 %" in failed.stdout
    before = steps(manage, "cli-fail")

    resumed = manage("provision_tenant", "cli-fail", "--continue")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    after = steps(manage, "cli-fail")
    assert (
        [after[n]["attempts"] for n in list(after)[:4]] == [before[n]["attempts"] for n in list(before)[:4]] == [1] * 4
    )
    docs = sorted(SandboxDocument.objects.values_list("doctype", "name"))

    retried = manage("provision_tenant", "cli-fail", "--retry")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    assert {s["attempts"] for n, s in steps(manage, "cli-fail").items() if n != "step_4_cost_centers"} == {2}
    assert sorted(SandboxDocument.objects.values_list("doctype", "name")) == docs


def test_no_wait_returns_while_workers_carry_on(manage):
    result = manage("provision_tenant", "cli-nowait", *create_args("Clinowait", "CLN"), "--no-wait")
    assert result.returncode == 0
    assert "enqueued" in result.stdout
