"""Structured logs: JSON lines carrying tenant, run id and step on every provisioning line, and nothing else."""

from __future__ import annotations

import io
import json
import logging
import uuid

import pytest
from django.conf import settings as django_settings

from moran.logjson import ContextFilter, JsonFormatter, bind, unbind
from provisioning.models import OnboardingStatus, SandboxFault
from provisioning.services import onboarding_start
from tests.support.factories import make_tenant
from tests.support.workers import WorkerProcess, realpath_available, wait_for_status


def json_handler(stream) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    return handler


def test_a_line_carries_the_bound_context_and_only_known_fields():
    # given
    stream = io.StringIO()
    logger = logging.getLogger("moran.test.logjson")
    logger.addHandler(json_handler(stream))
    logger.propagate = False
    token = bind(tenant="acme", run_id="r-1", step="step_1_company")
    # when
    try:
        logger.warning("hello %s", "world", extra={"attempt": 2, "password": "hunter2"})
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it broke")
    finally:
        unbind(token)
    logger.warning("after")
    # then
    first, broken, after = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first == {
        **first,
        "level": "warning",
        "logger": "moran.test.logjson",
        "message": "hello world",
        "tenant": "acme",
        "run_id": "r-1",
        "step": "step_1_company",
        "attempt": 2,
    }
    assert "password" not in first and "hunter2" not in stream.getvalue()
    assert first["ts"].endswith("Z")
    assert "ValueError: boom" in broken["exc"]
    assert "tenant" not in after, "the context ends with its task"


def test_the_plain_format_shows_the_context_too():
    record = logging.LogRecord("moran.provisioning", logging.INFO, __file__, 1, "done", None, None)
    record.run_id, record.step = "r-2", "step_9_finalize"
    ContextFilter().filter(record)
    assert record.context == " [run_id=r-2 step=step_9_finalize]"


@pytest.mark.django_db
def test_every_provisioning_line_of_a_run_carries_tenant_run_and_step(eager, on_commit):
    # given: a run with a failure, so that warning and error lines are there too
    stream = io.StringIO()
    handler = json_handler(stream)
    logging.getLogger().addHandler(handler)
    tenant = make_tenant()
    SandboxFault.objects.create(tenant=tenant, step="step_3_chart_of_accounts", kind=SandboxFault.Kind.TRANSIENT)
    # when
    try:
        run = on_commit(onboarding_start, onboarding=tenant.onboarding)
    finally:
        logging.getLogger().removeHandler(handler)
    # then
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    ours = [line for line in lines if line["logger"] == "moran.provisioning"]
    assert len(ours) >= 21, ours  # a start line, and a begin and an end line per step attempt
    assert all(line["run_id"] == str(run.id) for line in ours), ours
    assert all(line.get("tenant") in (tenant.slug, str(tenant.id)) for line in ours), ours
    step_lines = [line for line in ours if "attempt" in line["message"] or "completed" in line["message"]]
    assert all(line.get("step", "").startswith("step_") for line in step_lines), step_lines
    assert all(line["tenant"] == tenant.slug for line in step_lines), "inside a task the tenant is its slug"
    assert any(line["level"] == "warning" and line["step"] == "step_3_chart_of_accounts" for line in ours)


@pytest.mark.realpath
@pytest.mark.django_db(transaction=True)
def test_a_worker_writes_json_lines_with_the_context(django_db_setup):
    if not realpath_available():
        pytest.skip("real-path tests need PostgreSQL and a broker")
    # given: a worker configured as in docker-compose (LOG_FORMAT=json)
    queue = f"test-logs-{uuid.uuid4().hex[:8]}"
    proc = WorkerProcess(queue, env={"LOG_FORMAT": "json"}).start()
    previous = django_settings.PROVISIONING_QUEUE
    django_settings.PROVISIONING_QUEUE = queue
    try:
        tenant = make_tenant()
        # when
        run = onboarding_start(onboarding=tenant.onboarding)
        wait_for_status(tenant.onboarding, OnboardingStatus.COMPLETED)
    finally:
        django_settings.PROVISIONING_QUEUE = previous
        proc.stop()
    # then: every log line is JSON, and the provisioning lines carry the tenant's slug, the run and the step
    text = proc.log_path.read_text()
    logged = [line for line in text.splitlines() if line.startswith("{")]
    records = [json.loads(line) for line in logged]
    assert {r["logger"] for r in records} >= {"moran.provisioning", "celery.worker.strategy", "celery.app.trace"}
    steps = [r for r in records if r["logger"] == "moran.provisioning" and r.get("run_id") == str(run.id)]
    assert len(steps) == 20, steps  # "attempt 1 started" and "completed" for each of the ten steps
    assert all(r["tenant"] == tenant.slug and r["step"].startswith("step_") for r in steps)
    assert {r["step"] for r in steps} == set(tenant.onboarding.provisioning_steps)
    traced = [r for r in records if r["logger"] == "celery.app.trace" and r.get("run_id") == str(run.id)]
    assert len(traced) == 10, "Celery's own 'succeeded' lines carry the context too"
