"""The sweeper's wiring: its beat entry, its task, and the check that guards the broker's redelivery settings."""

import os

import pytest
from django.conf import settings as django_settings

from celery_app import app, beat_schedule
from moran.checks import check_redelivery_settings


def test_the_beat_schedule_runs_the_sweep_task():
    app.loader.import_default_modules()
    assert "provisioning.sweep" in app.tasks
    entry = beat_schedule(set(app.tasks))["provisioning.sweep"]
    assert entry["task"] == "provisioning.sweep"
    assert entry["schedule"] == float(django_settings.SWEEP_INTERVAL) == 5.0


@pytest.mark.django_db
def test_the_sweep_task_returns_what_it_did(eager):
    from provisioning.tasks import sweep

    assert sweep.apply().get() == []


def test_it_warns_when_the_visibility_timeout_is_shorter_than_a_step(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    assert [e.id for e in check_redelivery_settings(None)] == ["moran.W003"]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    assert check_redelivery_settings(None) == []


def test_the_sweeper_goes_to_a_queue_of_its_own(settings):
    # given the default: a queue of its own, beside the configured provisioning queue (a test session's worker fixture
    # points PROVISIONING_QUEUE elsewhere later; the sweeper's queue was derived at start-up)
    assert settings.SWEEP_QUEUE == f"{os.environ.get('MORAN_PROVISIONING_QUEUE', 'provisioning')}.sweeper"
    # when / then beat sends the sweep there; with none named, to the default (provisioning) queue
    assert beat_schedule({"provisioning.sweep"})["provisioning.sweep"]["options"]["queue"] == settings.SWEEP_QUEUE
    settings.SWEEP_QUEUE = ""
    assert "queue" not in beat_schedule({"provisioning.sweep"})["provisioning.sweep"]["options"]
