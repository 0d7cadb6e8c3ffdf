"""Settings for the Moran provisioning control plane.

Everything comes from the environment (django-environ). With no environment at all the project runs in its
*embedded default*: a SQLite file under ``var/``, Celery tasks executed in-process (no broker) and the sandbox
engine, so that a fresh clone can provision a demo tenant with no server installed.

``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to PostgreSQL and Redis (or RabbitMQ); ``MORAN_ENV=production``
turns on the system checks in ``moran.checks`` that refuse a broken production configuration.
"""

from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# An optional env file for local runs; docker-compose passes variables directly.
if (BASE_DIR / ".env").is_file():
    environ.Env.read_env(BASE_DIR / ".env")

MORAN_ENV = env.str("MORAN_ENV", default="development")
PRODUCTION = MORAN_ENV == "production"

# In production SECRET_KEY must come from the environment; the system check moran.E001 refuses to start without it.
SECRET_KEY = env.str("SECRET_KEY", default="" if PRODUCTION else "dev-insecure-key-not-for-production")
DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "moran.apps.MoranConfig",
    "tenants",
    "provisioning",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "moran.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "moran.wsgi.application"
ASGI_APPLICATION = "moran.asgi.application"

# --- Database -------------------------------------------------------------------------------------------------
VAR_DIR = Path(env.str("MORAN_VAR_DIR", default=str(BASE_DIR / "var")))
DATABASES = {"default": env.db("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'moran.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    # WAL lets the CLI's progress display read while a step writes; IMMEDIATE transactions take the write lock
    # up front, which is SQLite's stand-in for SELECT ... FOR UPDATE (it has no row locks).
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {"init_command": "PRAGMA journal_mode=WAL;", "transaction_mode": "IMMEDIATE", "timeout": 20}
    )
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    # Workers hold connections across tasks; check them before use so a restarted PostgreSQL costs one
    # reconnect instead of a failed step.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "var" / "static"

# --- Celery ---------------------------------------------------------------------------------------------------
# No broker configured = the embedded default: tasks run in the calling process, synchronously.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="")
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=not CELERY_BROKER_URL)
CELERY_TASK_EAGER_PROPAGATES = False
# Results are not used for control flow (the onboarding row is the source of truth); we do not store them.
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default="") or None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TIMEZONE = "UTC"
# One queue for provisioning so it can be given its own workers; tests use a queue of their own per session.
PROVISIONING_QUEUE = env.str("MORAN_PROVISIONING_QUEUE", default="provisioning")
CELERY_TASK_DEFAULT_QUEUE = PROVISIONING_QUEUE
# Steps are idempotent, so a message is acknowledged only after the step ran: a worker killed mid-step leaves the
# message to be redelivered instead of losing the step.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
# One message at a time per worker process: a long step must not hold other tenants' steps hostage.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Time limits per step (seconds); the sweeper derives its deadlines from the hard limit.
STEP_SOFT_TIME_LIMIT = env.int("MORAN_STEP_SOFT_TIME_LIMIT", default=120)
STEP_TIME_LIMIT = env.int("MORAN_STEP_TIME_LIMIT", default=180)
CELERY_TASK_SOFT_TIME_LIMIT = STEP_SOFT_TIME_LIMIT
CELERY_TASK_TIME_LIMIT = STEP_TIME_LIMIT
# Redis redelivers an unacknowledged message after the visibility timeout; it must exceed the longest step and the
# longest retry countdown, or a step still running would be delivered a second time.
STEP_RETRY_BACKOFF_MAX = env.int("MORAN_STEP_RETRY_BACKOFF_MAX", default=60)
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int(
        "MORAN_VISIBILITY_TIMEOUT", default=max(3600, 2 * (STEP_TIME_LIMIT + STEP_RETRY_BACKOFF_MAX))
    ),
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True

# Transient engine errors are retried with exponential backoff and full jitter, up to this many retries.
STEP_MAX_RETRIES = env.int("MORAN_STEP_MAX_RETRIES", default=5)
STEP_RETRY_BACKOFF = env.float("MORAN_STEP_RETRY_BACKOFF", default=2.0)

# --- Reliability: step leases and the sweeper (issue 6) ----------------------------------------------------------
# A second delivery of a step that another worker is running waits this long for its lease before it is dropped
# (covers the moment between a worker's death and PostgreSQL noticing its session ended).
STEP_LEASE_WAIT = env.float("MORAN_STEP_LEASE_WAIT", default=5.0)
# The sweeper (task provisioning.sweep on beat, and `manage.py sweep_provisioning`) resolves what no worker will:
# a step running or retrying past its deadline, a run committed but never enqueued, a run with no step in flight and
# no progress. A step's deadline is its hard time limit plus the longest retry countdown plus a margin; a live step is
# killed by its hard limit before it, so past it the step's worker is gone.
SWEEP_MARGIN = env.int("MORAN_SWEEP_MARGIN", default=60)
SWEEP_STEP_DEADLINE = env.int(
    "MORAN_SWEEP_STEP_DEADLINE", default=STEP_TIME_LIMIT + STEP_RETRY_BACKOFF_MAX + SWEEP_MARGIN
)
# A run with no step in flight (its next message lost with a broker) and no write for this long is stalled. It must
# exceed the longest wait of a message in the queue behind other tenants' steps.
SWEEP_STALL_DEADLINE = env.int("MORAN_SWEEP_STALL_DEADLINE", default=2 * SWEEP_STEP_DEADLINE)
# A run committed this long ago whose enqueue never succeeded (enqueued_at empty) is sent again as a new run.
SWEEP_ENQUEUE_GRACE = env.int("MORAN_SWEEP_ENQUEUE_GRACE", default=120)
# How many times in a row the sweeper resumes an onboarding by itself; past it, the interrupted step is marked
# failed ("Interrupted") and the onboarding PARTIAL/FAILED, for an operator to look at and continue.
SWEEP_MAX_RESUMES = env.int("MORAN_SWEEP_MAX_RESUMES", default=3)
SWEEP_INTERVAL = env.int("MORAN_SWEEP_INTERVAL", default=60)

from provisioning.sweeper import sweep_schedule  # noqa: E402  (a Django-free module: safe to import here)

CELERY_BEAT_SCHEDULE = {
    **sweep_schedule(SWEEP_INTERVAL),
}

# --- Provisioning ---------------------------------------------------------------------------------------------
# The engine connection a tenant gets when none is named.
DEFAULT_ENGINE = env.str("MORAN_DEFAULT_ENGINE", default="sandbox")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
