"""Probes for the web process: ``/healthz`` (the process answers) and ``/readyz`` (it can do its work: the database
and the broker are reachable).

Liveness checks nothing else on purpose: a database outage must not make the orchestrator restart every web process.
Readiness names what is unreachable — never a URL or a password, which the error text of a driver may contain.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import connections
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

logger = logging.getLogger("moran.health")


def database_check(alias: str = "default") -> dict | None:
    """Raises when the database cannot answer a trivial query."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def broker_check() -> dict | None:
    """Raises when the broker cannot be connected to within the readiness timeout. The embedded mode has no broker:
    tasks run in-process, so there is nothing to reach (and the answer says so)."""
    if settings.CELERY_TASK_ALWAYS_EAGER and not settings.CELERY_BROKER_URL:
        return {"detail": "embedded: no broker, tasks run in-process"}
    from kombu import Connection

    # A connection of our own (not the app's pool): the URL is read at request time, and a probe must never wait
    # behind the pool or retry for the broker's default minute.
    with Connection(
        settings.CELERY_BROKER_URL,
        connect_timeout=settings.READINESS_TIMEOUT,
        transport_options={"socket_timeout": settings.READINESS_TIMEOUT},
    ) as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=settings.READINESS_TIMEOUT)


CHECKS = {"database": database_check, "broker": broker_check}


@never_cache
@require_GET
def healthz(request):
    return JsonResponse({"status": "ok"})


@never_cache
@require_GET
def readyz(request):
    results, failing = {}, []
    for name, check in CHECKS.items():
        try:
            detail = check()
        except Exception as exc:  # every driver raises its own kinds; each means "not reachable"
            logger.warning("readiness: %s unreachable (%s)", name, type(exc).__name__)
            results[name] = {"ok": False, "error": type(exc).__name__}
            failing.append(name)
        else:
            results[name] = {"ok": True, **(detail or {})}
    if failing:
        body = {"status": "unavailable", "unavailable": failing, "checks": results}
        return JsonResponse(body, status=503)
    return JsonResponse({"status": "ok", "checks": results})
