"""Celery configured for the workload; the worker's health check; beat's schedule hook."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from django.conf import settings

from celery_app import app, beat_schedule
from provisioning.tasks import STEP_TASKS, webhook_deliver
from tests.support import workers
from tests.support.workers import ROOT


def test_steps_are_acknowledged_late_and_requeued_only_when_a_worker_is_lost():
    conf = app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost
    assert conf.task_acks_on_failure_or_timeout, "a recorded failure must not be redelivered"
    assert conf.worker_cancel_long_running_tasks_on_connection_loss
    assert conf.worker_prefetch_multiplier == 1
    assert conf.worker_send_task_events and conf.task_send_sent_event, "Flower needs the events"
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]
    for task in STEP_TASKS.values():
        assert task.acks_late and task.reject_on_worker_lost
        assert (task.soft_time_limit, task.time_limit) == (settings.STEP_SOFT_TIME_LIMIT, settings.STEP_TIME_LIMIT)


def test_the_visibility_timeout_outlasts_the_longest_step_and_retry_delay():
    visibility = app.conf.broker_transport_options["visibility_timeout"]
    assert visibility > settings.STEP_TIME_LIMIT + settings.STEP_RETRY_BACKOFF_MAX
    assert visibility > settings.WEBHOOK_RETRY_BACKOFF_MAX


def test_tasks_are_routed_to_their_queues():
    router = app.amqp.router
    provisioning = os.environ.get("MORAN_PROVISIONING_QUEUE", "provisioning")
    assert router.route({}, "provisioning.step_3_chart_of_accounts")["queue"].name == provisioning
    assert router.route({}, "provisioning.webhook_deliver")["queue"].name == (
        settings.NOTIFICATIONS_QUEUE or provisioning
    )


def test_webhook_retries_are_declarative_with_backoff():
    assert webhook_deliver.autoretry_for and webhook_deliver.retry_jitter
    assert webhook_deliver.retry_backoff == settings.WEBHOOK_RETRY_BACKOFF
    assert webhook_deliver.max_retries == settings.WEBHOOK_MAX_RETRIES


def test_beat_schedules_the_sweeper_only_once_it_exists(settings):
    settings.SWEEP_INTERVAL = 30
    assert beat_schedule(set()) == {}
    entry = beat_schedule({"provisioning.sweep"})["provisioning.sweep"]
    assert entry["task"] == "provisioning.sweep" and entry["schedule"] == 30.0
    settings.SWEEP_INTERVAL = 0
    assert beat_schedule({"provisioning.sweep"}) == {}
    # the real app: the entry is there exactly when the task is registered
    app.finalize()
    assert ("provisioning.sweep" in app.conf.beat_schedule) == ("provisioning.sweep" in app.tasks)


def test_beat_picks_up_the_sweeper_when_it_lands():
    # given: a fresh app in which a task named provisioning.sweep exists (as it will once the sweeper lands)
    script = (
        "from celery_app import app\n"
        "@app.task(name='provisioning.sweep')\n"
        "def sweep(): pass\n"
        "app.loader.import_default_modules(); app.finalize()\n"
        "entry = app.conf.beat_schedule['provisioning.sweep']\n"
        "print(entry['task'], entry['schedule'])\n"
    )
    env = {**os.environ, "MORAN_SWEEP_INTERVAL": "45"}
    env.pop("DATABASE_URL", None), env.pop("CELERY_BROKER_URL", None)
    # when
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    # then
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["provisioning.sweep", "45.0"]


@pytest.mark.realpath
def test_the_worker_health_check_pings_the_worker(worker):
    # given: the compose health check's command, aimed at the session's worker
    node = f"{worker.queue}@{socket.gethostname()}"
    env = {
        **os.environ,
        "DATABASE_URL": workers.worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    command = [sys.executable, "-m", "celery", "-A", "celery_app", "inspect", "ping", "--timeout", "10", "-d"]
    # when
    alive = subprocess.run([*command, node], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    gone = subprocess.run([*command, "nobody@nowhere"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    # then
    assert alive.returncode == 0, alive.stdout + alive.stderr
    assert "pong" in alive.stdout
    assert gone.returncode != 0


@pytest.mark.realpath
def test_beat_starts(tmp_path, django_db_setup):
    # given
    log = tmp_path / "beat.log"
    env = {
        **os.environ,
        "DATABASE_URL": workers.worker_database_url(),
        "CELERY_BROKER_URL": settings.CELERY_BROKER_URL,
    }
    command = ["celery", "-A", "celery_app", "beat", "--schedule", str(tmp_path / "schedule"), "--loglevel", "INFO"]
    # when
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while b"beat: Starting" not in log.read_bytes():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
    # then
    assert b"Traceback" not in log.read_bytes()
