"""System checks that refuse a broken production configuration (ids are stable: moran.E001 ...)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register


@register(Tags.security, deploy=False)
def check_production_settings(app_configs, **kwargs):
    if not settings.PRODUCTION:
        return []
    errors = []
    if settings.SECRET_KEY_MISSING:
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
