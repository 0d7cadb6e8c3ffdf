"""gunicorn settings for the web container (``gunicorn moran.wsgi:application -c python:moran.gunicorn_conf``).

Port 4000, as the operators' scripts expect. Everything else comes from the environment so that one image fits a
laptop and a production host.
"""

import os

bind = os.environ.get("GUNICORN_BIND", "0.0.0.0:4000")
workers = int(os.environ.get("GUNICORN_WORKERS", "3"))
threads = int(os.environ.get("GUNICORN_THREADS", "2"))
# Requests never wait on the engine (steps run on workers), so anything this slow is stuck.
timeout = int(os.environ.get("GUNICORN_TIMEOUT", "30"))
graceful_timeout = 20
# Restart a worker process now and then: a slow leak cannot grow for ever.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "2000"))
max_requests_jitter = 200
# Access log to stdout; Django's own log lines (JSON) go to stderr through LOGGING.
accesslog = "-"
forwarded_allow_ips = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1")

# gunicorn's own lines (its error log and the access log) as JSON lines too when the app logs JSON, so that one
# parser reads the whole container's output. The handler is named "console" because gunicorn's defaults, merged
# with this, point its root logger at a handler of that name.
if os.environ.get("LOG_FORMAT") == "json":
    logconfig_dict = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "moran.logjson.JsonFormatter"}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stdout"}},
        "loggers": {
            "gunicorn.error": {"handlers": ["console"], "level": "INFO", "propagate": False},
            "gunicorn.access": {"handlers": ["console"], "level": "INFO", "propagate": False},
        },
    }
