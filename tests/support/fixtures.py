"""The shared fixtures, registered as a pytest plugin by ``tests/conftest.py``.

* ``eager``: Celery runs tasks in the test process (the embedded mode), on_commit callbacks executed.
* ``worker``: a real ``celery -A celery_app worker`` process on PostgreSQL and the broker, consuming a queue of its
  own (so parallel test sessions on one machine never take each other's tasks). Tests that use it need
  ``@pytest.mark.django_db(transaction=True)`` so that what they write is committed and visible to the worker.

Real-path tests need ``DATABASE_URL`` (PostgreSQL) and ``CELERY_BROKER_URL``; ``make test`` sets both. Without them
they skip locally, and fail under CI=true: CI must never go green by skipping them.
"""

from __future__ import annotations

import os
import uuid

import pytest
from django.conf import settings

from celery_app import app as celery_app
from tests.support.workers import WorkerProcess, realpath_available


def pytest_collection_modifyitems(config, items):
    if realpath_available():
        return
    reason = "needs DATABASE_URL=postgres://… and CELERY_BROKER_URL (make test sets them)"
    needed = [item for item in items if "realpath" in item.keywords or "fault" in item.keywords]
    if needed and os.environ.get("CI") == "true":
        raise pytest.UsageError(f"CI must run the real-path tests, and they {reason}")
    for item in needed:
        item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def eager(settings):
    """Tasks run in-process, synchronously, as in the embedded default."""
    previous = celery_app.conf.task_always_eager
    celery_app.conf.task_always_eager = True
    settings.CELERY_TASK_ALWAYS_EAGER = True
    yield
    celery_app.conf.task_always_eager = previous


@pytest.fixture
def on_commit(django_capture_on_commit_callbacks):
    """Run on_commit callbacks (the enqueue) inside a test transaction, as a real commit would."""

    def run(fn, *args, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(*args, **kwargs)

    return run


@pytest.fixture(scope="session")
def worker_queue():
    queue = f"test-{uuid.uuid4().hex[:10]}"
    # Every step signature is routed to settings.PROVISIONING_QUEUE (retries keep their queue).
    settings.PROVISIONING_QUEUE = queue
    return queue


@pytest.fixture(scope="session")
def worker(django_db_setup, worker_queue):
    """A real worker for the whole session (the test database exists before it starts)."""
    if not realpath_available():
        pytest.skip("real-path tests need PostgreSQL and a broker")
    # Before each test module the broker may hold stale messages of this session's queue; the queue is unique, so
    # nothing from another session can arrive.
    proc = WorkerProcess(worker_queue).start()
    yield proc
    proc.stop()
