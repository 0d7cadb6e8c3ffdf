"""The sweeper's beat schedule entry. Imported by ``moran.settings``: keep it free of Django imports.

The sweeper itself (what it detects and how it resolves it) is :mod:`provisioning.recovery`; its task is
``provisioning.sweep`` (:mod:`provisioning.tasks`) and its one-pass command ``manage.py sweep_provisioning``.
"""

SWEEP_TASK = "provisioning.sweep"
DEFAULT_SWEEP_INTERVAL = 60


def sweep_schedule(interval: float = DEFAULT_SWEEP_INTERVAL) -> dict:
    """The ``CELERY_BEAT_SCHEDULE`` entry: one sweep every ``interval`` seconds. A sweep message not taken within
    the interval expires, so a backlog never turns into a burst of sweeps; two sweeps at once are safe anyway."""
    return {
        "provisioning-sweep": {
            "task": SWEEP_TASK,
            "schedule": float(interval),
            "options": {"expires": float(interval)},
        }
    }


#: the entry with the default interval (settings use :func:`sweep_schedule` with ``MORAN_SWEEP_INTERVAL``).
SWEEP_SCHEDULE = sweep_schedule()
