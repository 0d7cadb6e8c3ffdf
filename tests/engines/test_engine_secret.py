"""The API secret of an engine connection appears nowhere: not in a log line (this process's or the worker's), not in
a status response, a step error, a step log line or a command's output, during a full run with a failing step whose
engine message even echoes the credentials back."""

from __future__ import annotations

import json
import logging

import pytest

from provisioning.models import OnboardingStatus, StepLog
from provisioning.selectors import onboarding_logs, onboarding_status
from tenants.models import EngineConnection, Tenant
from tests.support.commands import run
from tests.support.workers import wait_for_status

pytestmark = [pytest.mark.realpath, pytest.mark.django_db(transaction=True)]


PROVISION_SEC = [
    *"provision_tenant sec --create --company".split(),
    "Secret Co",
    *"--abbr SEC --currency EUR --country Germany --admin-email admin@secret.test --cost-center Operations".split(),
    *"--engine lab --timeout 60 -v 2".split(),
]


def test_the_api_secret_appears_in_no_log_line_and_no_response(worker, frappe, monkeypatch, caplog):
    # given
    caplog.set_level(logging.DEBUG)
    secret = frappe.api_secret
    worker_log_start = worker.log_path.stat().st_size
    monkeypatch.setenv("MORAN_ENGINE_API_SECRET", secret)
    outputs = [run("add_engine", "lab", "--url", frappe.url, "--api-key", frappe.api_key)]
    frappe.inject(
        417,
        times=None,
        doctype="Cost Center",
        method="POST",
        exc_type="ValidationError",
        message=f"Cost center refused for token {frappe.api_key}:{secret}",
    )
    frappe.inject(503, times=2, doctype="Company")  # a retried step logs its transient errors too
    # when
    outputs.append(run(*PROVISION_SEC))
    onboarding = wait_for_status(Tenant.objects.get(slug="sec").onboarding, OnboardingStatus.PARTIAL)
    outputs.append(run("provisioning_status", "sec", "--json"))
    outputs.append(run("provision_tenant", "sec", "--verify"))
    # then: everything was captured, including the failure the engine reported
    status = onboarding_status(onboarding=onboarding)
    step_logs = [log.message for log in onboarding_logs(onboarding=onboarding)]
    worker_log = worker.log_path.read_bytes()[worker_log_start:].decode(errors="replace")
    captured = {
        "caplog": caplog.text,
        "worker log": worker_log,
        "status": json.dumps(status),
        "step logs": "\n".join(step_logs),
        "commands": json.dumps(outputs),
        "connection repr": repr(EngineConnection.objects.get(name="lab")),
    }
    assert status["errors"][0]["message"] == f"Cost center refused for token {frappe.api_key}:***"
    assert any("retrying" in line for line in step_logs)
    assert "step_4_cost_centers" in worker_log and "Secret Co" in captured["commands"]
    assert StepLog.objects.filter(onboarding=onboarding).count() == len(step_logs) > 10
    assert [where for where, text in captured.items() if secret in text] == []
