"""The Celery application, configured from Django settings (``CELERY_*``).

Run a worker with ``celery -A celery_app worker -Q provisioning``; Flower with ``celery -A celery_app flower``;
the scheduler with ``celery -A celery_app beat``.
"""

import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")

app = Celery("moran")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["provisioning"])


# --- Operations ---------------------------------------------------------------------------------------
#: periodic jobs: (task name, setting holding its interval in seconds). An entry is scheduled only once its task is
#: registered, so beat starts cleanly before the task lands and picks it up when it does.
PERIODIC_TASKS = (
    ("provisioning.sweep", "SWEEP_INTERVAL"),
    ("provisioning.batch_advance", "BATCH_ADVANCE_INTERVAL"),
    ("provisioning.webhook_dispatch", "WEBHOOK_DISPATCH_INTERVAL"),
)


def beat_schedule(registered) -> dict:
    from django.conf import settings

    schedule = {}
    for name, interval_setting in PERIODIC_TASKS:
        interval = getattr(settings, interval_setting, 0)
        if name in registered and interval > 0:
            schedule[name] = {"task": name, "schedule": float(interval), "options": {"expires": float(interval)}}
    return schedule


@app.on_after_finalize.connect
def _add_periodic_tasks(sender, **kwargs):
    # After finalize every autodiscovered task is registered (beat and the worker import them before finalizing).
    # add_periodic_task, not an assignment to conf.beat_schedule: under the CELERY_ namespace that would be ignored.
    for name, entry in beat_schedule(sender.tasks).items():
        sender.add_periodic_task(entry["schedule"], sender.signature(entry["task"]), name=name, **entry["options"])


@signals.setup_logging.connect
def _use_django_logging(**kwargs):
    # Connecting this signal tells Celery not to configure logging: Django's LOGGING (JSON lines in production)
    # applies to workers, beat and Flower alike.
    import django

    django.setup()


@signals.task_prerun.connect
def _bind_log_context(**kwargs):
    from moran.logjson import bind_task

    bind_task(**kwargs)


@signals.task_postrun.connect
def _unbind_log_context(**kwargs):
    from moran.logjson import unbind_task

    unbind_task(**kwargs)
