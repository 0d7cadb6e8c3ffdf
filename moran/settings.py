"""Settings for the Moran provisioning control plane.

Everything comes from the environment (django-environ). With no environment at all the project runs in its
*embedded default*: a SQLite file under ``var/``, Celery tasks executed in-process (no broker) and the sandbox
engine, so that a fresh clone can provision a demo tenant with no server installed.

``DATABASE_URL`` and ``CELERY_BROKER_URL`` switch to PostgreSQL and Redis (or RabbitMQ); ``MORAN_ENV=production``
turns on the system checks in ``moran.checks`` that refuse a broken production configuration.
"""

import ipaddress
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
    # (The check is one extra round trip per task; the benchmarks measure it: CONN_HEALTH_CHECKS=false.)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = env.bool("CONN_HEALTH_CHECKS", default=True)

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
# One message at a time per worker process. A long step must not hold other tenants' steps hostage; and with acks_late
# every message a worker holds is one it is executing (a slot frees only when its step is acknowledged), so a worker
# that dies takes no message it had not begun with it -- which is also what lets the sweeper read the queue's order
# from the steps that began (a message sent after one that never began was taken: that one is lost).
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

# --- Reliability: step leases, the sweeper, the broker and the database connections ---------------------
# A second delivery of a step that another worker is running waits this long for its lease before it is dropped
# (covers the moment between a worker's death and PostgreSQL noticing its session ended).
STEP_LEASE_WAIT = env.float("MORAN_STEP_LEASE_WAIT", default=5.0)
# The step's own statements are prepared once per database session (planning them cost more than running them).
# Off behind a pooler that hands one client's statements to other sessions (PgBouncer in transaction mode).
PREPARED_STATEMENTS = env.bool("MORAN_PREPARED_STATEMENTS", default=True)
# The sweeper (task provisioning.sweep on beat, and `manage.py sweep_provisioning`) decides by liveness: a step shown
# running whose lease no live database session holds is resumed, and a chain whose next message was lost is resumed,
# within seconds. See provisioning/recovery.py. How often it passes: a pass costs three queries whatever the number of
# tenants (the active rows, their runs, pg_locks), so it can pass often; a dead worker is noticed within one interval
# plus the liveness grace.
SWEEP_INTERVAL = env.int("MORAN_SWEEP_INTERVAL", default=5)
# A running step whose lease is free is taken for dead only this long after it began: the clocks of the worker and of
# the sweeper's host may differ by a little.
SWEEP_LIVENESS_GRACE = env.int("MORAN_SWEEP_LIVENESS_GRACE", default=5)
# The chain's next message is taken for lost once messages sent after it were begun by workers at least this long
# ago (a message is begun within moments of being taken: prefetch is one per process, with acks_late)...
SWEEP_PICKUP_GRACE = env.int("MORAN_SWEEP_PICKUP_GRACE", default=5)
# ... comparing times written by different hosts, with this margin for clock skew and for the moment between a
# step's end being written and its next message sent.
SWEEP_FIFO_MARGIN = env.int("MORAN_SWEEP_FIFO_MARGIN", default=2)
# ... or when no worker has begun any step for this long and none is executing one (the broker lost every message,
# or no worker is up: then each further resume waits twice as long, up to the stall deadline).
SWEEP_IDLE_GRACE = env.int("MORAN_SWEEP_IDLE_GRACE", default=15)
# A run committed this long ago whose enqueue never succeeded (enqueued_at empty) is sent again as a new run. An
# enqueue takes milliseconds, or a few seconds of the broker client's retries when the broker is down.
SWEEP_ENQUEUE_GRACE = env.int("MORAN_SWEEP_ENQUEUE_GRACE", default=15)
# Backstops, for what liveness cannot see: a live worker hung past its time limits (a step's deadline is its hard
# time limit plus the longest retry countdown plus a margin; a live step is killed by its hard limit before it), and a
# run with no step in flight and no write for twice that.
SWEEP_MARGIN = env.int("MORAN_SWEEP_MARGIN", default=60)
SWEEP_STEP_DEADLINE = env.int(
    "MORAN_SWEEP_STEP_DEADLINE", default=STEP_TIME_LIMIT + STEP_RETRY_BACKOFF_MAX + SWEEP_MARGIN
)
SWEEP_STALL_DEADLINE = env.int("MORAN_SWEEP_STALL_DEADLINE", default=2 * SWEEP_STEP_DEADLINE)
# How many times in a row the sweeper resumes a step that dies while it runs; past it, the step is marked failed
# ("Interrupted") and the onboarding PARTIAL/FAILED, for an operator to look at and continue.
SWEEP_MAX_RESUMES = env.int("MORAN_SWEEP_MAX_RESUMES", default=3)
# beat schedules provisioning.sweep every SWEEP_INTERVAL seconds (celery_app.beat_schedule) on a queue of its own,
# which every worker consumes besides its -Q queues (celery_app adds it): on the provisioning queue a sweep would wait
# behind the whole backlog of steps -- minutes with hundreds of tenants in flight -- and expire. Empty = the
# provisioning queue.
SWEEP_QUEUE = env.str("MORAN_SWEEP_QUEUE", default=f"{PROVISIONING_QUEUE}.sweeper")

# A worker cut off from the network (not killed) keeps its PostgreSQL session, and with it a step's lease, until TCP
# notices: two hours with Linux's defaults. Both ends are bounded here, so that the session ends, and the lease frees,
# within about 30 s (idle 10 s + 4 probes x 5 s): the worker's side by libpq's keepalives and tcp_user_timeout
# (unacknowledged data), the server's side per session (tcp_keepalives_*; client_connection_check_interval, on
# PostgreSQL 14 and later, also ends a query whose client is gone). A late write of the cut-off worker, once its link
# is back, is on a new session and fenced like any other.
DB_KEEPALIVE_IDLE = env.int("MORAN_DB_KEEPALIVE_IDLE", default=10)
DB_KEEPALIVE_INTERVAL = env.int("MORAN_DB_KEEPALIVE_INTERVAL", default=5)
DB_KEEPALIVE_COUNT = env.int("MORAN_DB_KEEPALIVE_COUNT", default=4)
if DATABASES["default"]["ENGINE"].endswith("postgresql"):
    _server_side = (
        f"-c tcp_keepalives_idle={DB_KEEPALIVE_IDLE} -c tcp_keepalives_interval={DB_KEEPALIVE_INTERVAL}"
        f" -c tcp_keepalives_count={DB_KEEPALIVE_COUNT}"
        # Keepalives probe only an idle socket: a session cut off while the server's last reply was still
        # unacknowledged retransmits instead, for tcp_retries2 (about 15 minutes). Bound that too.
        f" -c tcp_user_timeout={1000 * (DB_KEEPALIVE_IDLE + DB_KEEPALIVE_INTERVAL * DB_KEEPALIVE_COUNT)}"
    )
    if env.bool("MORAN_DB_CONNECTION_CHECK", default=True):
        _server_side += f" -c client_connection_check_interval={DB_KEEPALIVE_INTERVAL * 1000}"
    _db_options = DATABASES["default"].setdefault("OPTIONS", {})
    for _key, _value in {
        "keepalives": 1,
        "keepalives_idle": DB_KEEPALIVE_IDLE,
        "keepalives_interval": DB_KEEPALIVE_INTERVAL,
        "keepalives_count": DB_KEEPALIVE_COUNT,
        "tcp_user_timeout": 1000 * (DB_KEEPALIVE_IDLE + DB_KEEPALIVE_INTERVAL * DB_KEEPALIVE_COUNT),
    }.items():
        _db_options.setdefault(_key, _value)
    _db_options["options"] = f"{_db_options.get('options', '')} {_server_side}".strip()

# The broker. Redis and RabbitMQ both work (README: which to choose). With acks_late a message is acknowledged once
# its step ended; a worker that dies holding it: RabbitMQ hands it back the moment the connection drops, Redis after
# the visibility timeout (an hour here: it must exceed the longest step plus the longest retry countdown, or a live
# step would be delivered twice). Neither wait matters to recovery: the sweeper notices the dead step within seconds
# by its lease, and the late copy, when it comes, is fenced.
if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    # Publisher confirms: a chain's next message is sent only once the broker has it.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
    # RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer_timeout (30 min by default),
    # and a retry's countdown is held unacknowledged: both stay far below it (3 min hard limit, 1 min countdown).

# Batches advance when one of their runs ends; beat also passes over every unfinished batch this often, in case
# that message was lost (0 turns the pass off).
BATCH_ADVANCE_INTERVAL = env.int("MORAN_BATCH_ADVANCE_INTERVAL", default=30)

# --- Provisioning ---------------------------------------------------------------------------------------------
# The engine connection a tenant gets when none is named.
DEFAULT_ENGINE = env.str("MORAN_DEFAULT_ENGINE", default="sandbox")
# The null engine provisions nothing (benchmarks measure Moran's own cost with it); off unless a benchmark sets it.
NULL_ENGINE_ALLOWED = env.bool("MORAN_NULL_ENGINE", default=False)


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
# The outbox: a delivery still pending this long after it was due (its send message lost with a worker or a broker),
# or whose sender's claim expired, is sent again by provisioning.webhook_dispatch, on beat every DISPATCH_INTERVAL
# seconds (0 turns it off). The receiver dedupes by Idempotency-Key all the same.
WEBHOOK_DISPATCH_INTERVAL = env.int("MORAN_WEBHOOK_DISPATCH_INTERVAL", default=30)
WEBHOOK_DISPATCH_GRACE = env.int("MORAN_WEBHOOK_DISPATCH_GRACE", default=60)
# Where a webhook may go: https only, to public addresses only (checked when a URL is saved and again, on the resolved
# address the call connects to, at every try). MORAN_WEBHOOK_ALLOWED_NETWORKS names CIDRs allowed all the same (an
# in-house receiver on 10.0.0.0/8, say); MORAN_WEBHOOK_ALLOW_HTTP allows plain http.
WEBHOOK_ALLOW_HTTP = env.bool("MORAN_WEBHOOK_ALLOW_HTTP", default=False)
# Parsed here so that a mistyped CIDR stops the process at start-up rather than a tenant's save or a send.
WEBHOOK_ALLOWED_NETWORKS = [
    str(ipaddress.ip_network(cidr, strict=False)) for cidr in env.list("MORAN_WEBHOOK_ALLOWED_NETWORKS", default=[])
]

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
if PRODUCTION:
    # Hashed names from collectstatic's manifest: files cached for ever, and a page never mixes old and new assets.
    _static_storage = "whitenoise.storage.CompressedManifestStaticFilesStorage"
else:
    # Outside production WhiteNoise serves straight from the apps' static folders (the finders), re-reading them on
    # change, so `make serve` shows a styled admin on a fresh clone with DEBUG off and no collectstatic. runserver's
    # own static handler (DEBUG only) is switched off so that one code path serves files whatever DEBUG says.
    _static_storage = "whitenoise.storage.CompressedStaticFilesStorage"
    WHITENOISE_USE_FINDERS = True
    WHITENOISE_AUTOREFRESH = True
    INSTALLED_APPS.insert(INSTALLED_APPS.index("django.contrib.staticfiles"), "whitenoise.runserver_nostatic")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": _static_storage},
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
# The sidecar ships Swagger UI and ReDoc as static files: the docs page works on a network with no way out.
INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar", "accounts"]

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
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Swagger UI would otherwise show a badge fetched from validator.swagger.io: the page must call no other host.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
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

# --- Security -------------------------------------------------------------------------------------------------
# Kept in one block so that other changes to this file stay out of its way. SECURITY.md says what each one protects.

# Engine API secrets are stored encrypted (Fernet, moran.encryption). MORAN_SECRET_KEYS: comma-separated Fernet keys;
# the first encrypts, every one decrypts, so a key is rotated by putting the new one first, running
# `manage.py rotate_engine_secrets`, then removing the old one. Production without a key does not start (moran.E006).
MORAN_SECRET_KEYS = env.list("MORAN_SECRET_KEYS", default=[])
# DEVELOPMENT ONLY: with no key set, one is derived from SECRET_KEY so the embedded default needs no setup. Such a key
# is only as secret as SECRET_KEY (in development, a published default): never rely on it for real credentials.
MORAN_SECRET_KEYS_DERIVED = not MORAN_SECRET_KEYS and not PRODUCTION
if MORAN_SECRET_KEYS_DERIVED:
    _digest = __import__("hashlib").sha256(f"moran-engine-secrets:{SECRET_KEY}".encode()).digest()
    MORAN_SECRET_KEYS = [__import__("base64").urlsafe_b64encode(_digest).decode()]

# The log-in throttles count the address of the client, read from X-Forwarded-For only when this many proxies of
# ours stand in front (each appends one address). 0 = not behind a proxy: the header is the client's to invent and is
# ignored. (DRF reads None as "trust the whole header", so 0 must stay 0.)
MORAN_NUM_PROXIES = env.int("MORAN_NUM_PROXIES", default=0)
REST_FRAMEWORK["NUM_PROXIES"] = MORAN_NUM_PROXIES
# JSON bodies under /api/ are refused past this many bytes (413), before they are parsed; the API's largest
# legitimate body (a tenant with its lists) is a few kilobytes.
MORAN_MAX_JSON_BODY = env.int("MORAN_MAX_JSON_BODY", default=1024 * 1024)
REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"] = ["moran.api.parsers.StrictJSONParser"]
# Rotating SECRET_KEY: the old key here (comma-separated) keeps sessions and signed values valid until they expire.
SECRET_KEY_FALLBACKS = env.list("SECRET_KEY_FALLBACKS", default=[])
# A refused CSRF check under /api/ answers JSON like every other /api/ error (the admin keeps Django's page).
CSRF_FAILURE_VIEW = "moran.api.exception_handlers.csrf_failure"
