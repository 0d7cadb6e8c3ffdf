"""System checks that refuse a broken production configuration (ids are stable: moran.E001 ...)."""

from django.conf import settings
from django.core.checks import Error, Tags, Warning, register

from moran.encryption import keys_problem


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


# --- Operations ---------------------------------------------------------------------------------------
@register(Tags.compatibility, deploy=False)
def check_operations_settings(app_configs, **kwargs):
    errors = []
    visibility = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600)
    if visibility <= settings.WEBHOOK_RETRY_BACKOFF_MAX:
        # Redis hands an unacknowledged (countdown) message to another worker after the visibility timeout: a retry
        # delay beyond it would deliver the webhook twice at once.
        errors.append(
            Error(
                f"The broker visibility timeout ({visibility} s) does not exceed MORAN_WEBHOOK_RETRY_BACKOFF_MAX "
                f"({settings.WEBHOOK_RETRY_BACKOFF_MAX} s).",
                hint="Lower MORAN_WEBHOOK_RETRY_BACKOFF_MAX or raise MORAN_VISIBILITY_TIMEOUT.",
                id="moran.E004",
            )
        )
    if settings.PRODUCTION and settings.WEBHOOK_URL and not settings.WEBHOOK_SECRET:
        errors.append(
            Warning(
                "MORAN_WEBHOOK_URL is set but MORAN_WEBHOOK_SECRET is not: webhook calls go out unsigned.",
                hint="Set MORAN_WEBHOOK_SECRET so that receivers can verify X-Moran-Signature.",
                id="moran.W002",
            )
        )
    if settings.LOG_FORMAT not in ("json", "plain"):
        errors.append(Error(f"LOG_FORMAT is '{settings.LOG_FORMAT}'.", hint="Use json or plain.", id="moran.E005"))
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
            id="moran.W003",
        )
    ]


# --- Security -------------------------------------------------------------------------------------------------
@register(Tags.security)
def check_secret_keys(app_configs, **kwargs):
    """Engine secrets are encrypted with MORAN_SECRET_KEYS (moran.encryption): production must name its own keys, and
    every key must be a Fernet key, or the first secret saved or read would fail."""
    if settings.PRODUCTION and not settings.MORAN_SECRET_KEYS:
        return [
            Error(
                "MORAN_SECRET_KEYS is not set: engine secrets cannot be encrypted.",
                hint="Set MORAN_SECRET_KEYS to a Fernet key: python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())' (SECURITY.md: rotating keys).",
                id="moran.E010",
            )
        ]
    problem = keys_problem(settings.MORAN_SECRET_KEYS)
    if problem:
        return [Error(f"{problem}.", hint="Generate keys with Fernet.generate_key().", id="moran.E011")]
    return []
