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
# (Django itself refuses an empty key before any check can speak, so a missing one becomes a random per-process key
# that signs nothing another process could verify, and is reported by the check.)
SECRET_KEY = env.str("SECRET_KEY", default="")
SECRET_KEY_MISSING = not SECRET_KEY
if SECRET_KEY_MISSING:
    SECRET_KEY = "dev-insecure-key-not-for-production" if not PRODUCTION else __import__("secrets").token_urlsafe(50)
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

# --- Engine capacity (provisioning/capacity.py) --------------------------------------------------------------
# A step that finds no free slot of its engine waits at most CAPACITY_WAIT seconds in its worker, then goes back to
# the queue for about CAPACITY_REQUEUE seconds (neither counts as an attempt).
# MORAN_ENGINE_CAPACITY=0 turns the slots and the company-creation lock off: only for comparisons (benchmarks/fleet.py).
CAPACITY_ENABLED = env.bool("MORAN_ENGINE_CAPACITY", default=True)
CAPACITY_WAIT = env.float("MORAN_CAPACITY_WAIT", default=1.0)
CAPACITY_REQUEUE = env.float("MORAN_CAPACITY_REQUEUE", default=1.0)
# What creating a company costs the sandbox, in seconds when it runs alone (it grows with concurrent creates);
# a real ERPNext takes about 2.5 s. 0 keeps the embedded mode and the tests fast.
SANDBOX_COMPANY_LATENCY = env.float("MORAN_SANDBOX_COMPANY_LATENCY", default=0.0)

# --- Reliability: step leases and the sweeper ----------------------------------------------------------
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

# beat schedules provisioning.sweep every SWEEP_INTERVAL seconds: see celery_app.beat_schedule.

# --- Provisioning ---------------------------------------------------------------------------------------------
# The engine connection a tenant gets when none is named.
DEFAULT_ENGINE = env.str("MORAN_DEFAULT_ENGINE", default="sandbox")


# === Operations: Celery for this workload, beat, notifications, health, metrics, logging ============
# Kept in one block so that other changes to this file stay out of its way.

# A step that raised or hit its time limit is recorded in the database already (failed / retrying); redelivering its
# message would only run it again behind the state's back. So a failure or a timeout acknowledges the message even
# under acks_late, and only a *lost worker* (reject_on_worker_lost above) requeues.
CELERY_TASK_ACKS_ON_FAILURE_OR_TIMEOUT = True
# With acks_late, a lost broker connection makes the broker hand our unacknowledged messages to another worker; the
# steps would then run twice at once. Fencing makes the second write harmless, but cancelling here avoids the double
# work against the engine in the first place.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = True
# Webhook deliveries go to a queue of their own when one is named, so that a slow receiver never takes a worker slot
# that a step needs. Empty = the provisioning queue (one worker serves both, as in the tests).
NOTIFICATIONS_QUEUE = env.str("MORAN_NOTIFICATIONS_QUEUE", default="")
# Routing by name: a step or a webhook sent without an explicit queue still lands on the right one. The services
# also set the queue explicitly on every signature, which is what the tests' per-session queues rely on.
CELERY_TASK_ROUTES = {
    "provisioning.step_*": {"queue": PROVISIONING_QUEUE},
    "provisioning.webhook_*": {"queue": NOTIFICATIONS_QUEUE or PROVISIONING_QUEUE},
}
# A worker process is recycled after this many tasks: a slow leak in a client library cannot grow for ever.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("MORAN_WORKER_MAX_TASKS_PER_CHILD", default=1000)
# Celery must not replace the root logger's handlers: LOGGING below (JSON lines) applies to workers too.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False

# Periodic jobs for `celery beat`. The schedule is built in celery_app.py once the tasks are registered: an entry is
# added only for a task that exists (the sweeper, `provisioning.sweep`, every SWEEP_INTERVAL seconds, set above).
# MORAN_SWEEP_INTERVAL=0 turns it off.
CELERY_BEAT_SCHEDULE: dict = {}

# Notifications: a webhook called when an onboarding reaches COMPLETED, PARTIAL or FAILED. A tenant's own URL wins
# over the global one; the body is signed with HMAC-SHA256 over MORAN_WEBHOOK_SECRET.
WEBHOOK_URL = env.str("MORAN_WEBHOOK_URL", default="")
WEBHOOK_SECRET = env.str("MORAN_WEBHOOK_SECRET", default="")
WEBHOOK_TIMEOUT = env.float("MORAN_WEBHOOK_TIMEOUT", default=5.0)
WEBHOOK_MAX_RETRIES = env.int("MORAN_WEBHOOK_MAX_RETRIES", default=10)
# Celery's exponential backoff takes whole seconds: retry n waits up to factor * 2**n, capped, with full jitter.
WEBHOOK_RETRY_BACKOFF = env.int("MORAN_WEBHOOK_RETRY_BACKOFF", default=5)
WEBHOOK_RETRY_BACKOFF_MAX = env.int("MORAN_WEBHOOK_RETRY_BACKOFF_MAX", default=600)

# Health and metrics. /readyz gives each dependency this long before calling it unreachable (a load balancer's probe
# must not hang); /metrics asks for a bearer token when one is set.
READINESS_TIMEOUT = env.float("MORAN_READINESS_TIMEOUT", default=2.0)
METRICS_TOKEN = env.str("MORAN_METRICS_TOKEN", default="")

# Static files (the admin's CSS and JS) served by the web process itself with WhiteNoise: gunicorn serves no files,
# and a compose deployment has no separate file server. The image runs collectstatic at build time.
MIDDLEWARE.insert(
    MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1, "whitenoise.middleware.WhiteNoiseMiddleware"
)
STATIC_ROOT = env.path("MORAN_STATIC_ROOT", default=str(STATIC_ROOT))
# Compressed, not manifest-hashed: a missing manifest would break every page of a checkout that never ran collectstatic.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

# Behind a TLS-terminating proxy: trust its X-Forwarded-Proto, send cookies only over HTTPS, redirect plain HTTP
# (except the probes, which the orchestrator sends in plain HTTP from inside the network).
if env.bool("MORAN_BEHIND_HTTPS", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=3600)

# Logs: JSON lines (one object per line, with tenant, run_id and step on every provisioning line) for log shippers;
# plain text for a terminal. docker-compose sets LOG_FORMAT=json.
LOG_FORMAT = env.str("LOG_FORMAT", default="plain")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"context": {"()": "moran.logjson.ContextFilter"}},
    "formatters": {
        "plain": {
            "()": "moran.logjson.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s%(context)s",
        },
        "json": {"()": "moran.logjson.JsonFormatter"},
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "json" if LOG_FORMAT == "json" else "plain",
            "filters": ["context"],
        }
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # A worker's start and "ready." lines are logged whatever LOG_LEVEL says: one line per start, and what log
        # watchers (and the test fixtures) wait for.
        "celery.apps.worker": {"level": "INFO"},
    },
}

# --- The operators' API ---------------------------------------------------------------------------------
INSTALLED_APPS += ["drf_spectacular", "accounts"]

# Log-in tokens: an ApiToken row per log-in (hashed; revocable), valid this many seconds.
MORAN_API_TOKEN_TTL = env.int("MORAN_API_TOKEN_TTL", default=8 * 3600)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["accounts.authentication.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON in, JSON out: no browsable HTML API (the docs page is /api/docs/).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "EXCEPTION_HANDLER": "moran.api.exception_handlers.api_exception_handler",
    "DEFAULT_SCHEMA_CLASS": "moran.api.schema.AutoSchema",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    # Only the log-in view is throttled (its own throttle classes); these are its rates.
    "DEFAULT_THROTTLE_RATES": {
        "login_address": env.str("MORAN_LOGIN_RATE_PER_ADDRESS", default="10/min"),
        "login_email": env.str("MORAN_LOGIN_RATE_PER_EMAIL", default="5/min"),
    },
    # Behind a proxy, set NUM_PROXIES so throttles count the client's address, not the proxy's.
    "NUM_PROXIES": env.int("MORAN_NUM_PROXIES", default=0) or None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Moran operators' API",
    "DESCRIPTION": "Tenants and their provisioning. Log in at POST /api/auth/login, then send "
    "`Authorization: Bearer <access_token>`. Errors are JSON: {error, detail, fields?}.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/",
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "ENUM_NAME_OVERRIDES": {
        "OnboardingStatusEnum": "moran.api.enums.ONBOARDING_STATUSES",
        "StepStatusEnum": "moran.api.enums.STEP_STATUSES",
        "StepNameEnum": "moran.api.enums.STEPS",
        "LogLevelEnum": "moran.api.enums.LOG_LEVELS",
    },
}

# The cache counts log-in attempts for the throttles. Django's default (LocMem) is per process: with several web
# processes each would count on its own. So: CACHE_URL, else REDIS_URL, else the broker when it is Redis (keys are
# prefixed, they do not mix with Celery's); LocMem only in the embedded default (one process).
_cache_url = env.str("CACHE_URL", default="") or env.str("REDIS_URL", default="")
if not _cache_url and CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    _cache_url = CELERY_BROKER_URL
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": _cache_url, "KEY_PREFIX": "moran"}
        if _cache_url
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "moran"}
    )
}
