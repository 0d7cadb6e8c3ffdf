"""System checks that refuse a broken production configuration (ids are stable: moran.E001 ...)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=False)
def check_production_settings(app_configs, **kwargs):
    if not settings.PRODUCTION:
        return []
    errors = []
    if not settings.SECRET_KEY:
        errors.append(
            Error(
                "SECRET_KEY is not set.",
                hint="Set the SECRET_KEY environment variable to a long random string when MORAN_ENV=production.",
                id="moran.E001",
            )
        )
    if settings.DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
        errors.append(
            Error(
                "Production runs on SQLite.",
                hint="Set DATABASE_URL to a PostgreSQL database: workers on several machines must share one database.",
                id="moran.E002",
            )
        )
    if settings.CELERY_TASK_ALWAYS_EAGER or not settings.CELERY_BROKER_URL:
        errors.append(
            Error(
                "Production has no Celery broker.",
                hint="Set CELERY_BROKER_URL (redis://… or amqp://…) so that steps run on workers.",
                id="moran.E003",
            )
        )
    if settings.DEBUG:
        errors.append(Warning("DEBUG is on in production.", id="moran.W001"))
    return errors


@register(Tags.compatibility)
def check_redelivery_settings(app_configs, **kwargs):
    """A Redis broker hands an unacknowledged message to another worker after the visibility timeout: shorter than
    a step's hard time limit plus the longest retry countdown, a step still running (or a retry waiting for its
    countdown) would be delivered a second time. The step lease makes that harmless, but it wastes a worker."""
    if not settings.CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
        return []
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    longest = settings.STEP_TIME_LIMIT + settings.STEP_RETRY_BACKOFF_MAX
    if visibility > longest:
        return []
    return [
        Warning(
            f"The broker's visibility timeout ({visibility} s) is not longer than a step's hard time limit plus the "
            f"longest retry countdown ({longest} s).",
            hint="Raise MORAN_VISIBILITY_TIMEOUT, or lower MORAN_STEP_TIME_LIMIT / MORAN_STEP_RETRY_BACKOFF_MAX.",
            id="moran.W002",
        )
    ]
