"""The web process's probes: /healthz (alive) and /readyz (database and broker reachable, 503 naming which is not)."""

from __future__ import annotations

import socket

import pytest
from django.db import connections

from tests.support.workers import realpath_available


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def database_unreachable():
    """Point the default connection at a database that cannot be reached, for real: a closed port for PostgreSQL,
    a path that cannot exist for SQLite. Restored (and reconnected) afterwards."""
    connection = connections["default"]
    saved = dict(connection.settings_dict)
    connection.close()
    if connection.vendor == "postgresql":
        connection.settings_dict.update({"HOST": "127.0.0.1", "PORT": str(closed_port())})
    else:
        connection.settings_dict["NAME"] = "/nonexistent-moran-dir/db.sqlite3"
    yield
    connection.close()
    connection.settings_dict.clear()
    connection.settings_dict.update(saved)


def test_it_is_alive_without_checking_anything(client, settings):
    # given: even the broker is gone
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"
    # when
    response = client.get("/healthz")
    # then
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_it_is_ready_when_database_and_broker_answer(client):
    if not realpath_available():
        pytest.skip("needs the broker (make test sets CELERY_BROKER_URL)")
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": {"database": {"ok": True}, "broker": {"ok": True}}}


@pytest.mark.django_db
def test_it_names_the_broker_when_the_broker_is_unreachable(client, settings):
    # given
    settings.CELERY_BROKER_URL = f"redis://:hunter2@127.0.0.1:{closed_port()}/0"
    settings.READINESS_TIMEOUT = 1.0
    # when
    response = client.get("/readyz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["unavailable"] == ["broker"]
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"]["ok"] is False
    assert "hunter2" not in response.content.decode(), "the broker's password must never be shown"


@pytest.mark.django_db(transaction=True)
def test_it_names_the_database_when_the_database_is_unreachable(client, database_unreachable):
    # when
    response = client.get("/readyz")
    # then
    assert response.status_code == 503
    body = response.json()
    assert body["unavailable"] == ["database"]
    assert body["checks"]["database"] == {"ok": False, "error": "OperationalError"}


@pytest.mark.django_db(transaction=True)
def test_it_names_both_when_both_are_unreachable(client, settings, database_unreachable):
    settings.CELERY_BROKER_URL = f"redis://127.0.0.1:{closed_port()}/0"
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["unavailable"] == ["database", "broker"]


@pytest.mark.django_db
def test_it_is_ready_without_a_broker_in_the_embedded_mode(client, settings):
    settings.CELERY_BROKER_URL = ""
    settings.CELERY_TASK_ALWAYS_EAGER = True
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["broker"] == {"ok": True, "detail": "embedded: no broker, tasks run in-process"}


def test_the_probes_refuse_writes(client):
    assert client.post("/healthz").status_code == 405
