"""The sweeper's wiring: its beat entry, its task, and the check that guards the broker's redelivery settings."""

import pytest
from django.conf import settings as django_settings

from celery_app import app
from moran.checks import check_redelivery_settings
from provisioning.sweeper import SWEEP_SCHEDULE, SWEEP_TASK, sweep_schedule


def test_the_beat_schedule_runs_the_sweep_task():
    entry = django_settings.CELERY_BEAT_SCHEDULE["provisioning-sweep"]
    assert entry["task"] == SWEEP_TASK == "provisioning.sweep"
    assert entry["schedule"] == float(django_settings.SWEEP_INTERVAL)
    assert SWEEP_SCHEDULE == sweep_schedule(60)
    app.loader.import_default_modules()
    assert SWEEP_TASK in app.tasks


@pytest.mark.django_db
def test_the_sweep_task_returns_what_it_did(eager):
    from provisioning.tasks import sweep

    assert sweep.apply().get() == []


def test_it_warns_when_the_visibility_timeout_is_shorter_than_a_step(settings):
    settings.CELERY_BROKER_URL = "redis://127.0.0.1:6379/0"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 60}
    assert [e.id for e in check_redelivery_settings(None)] == ["moran.W002"]
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
    assert check_redelivery_settings(None) == []
