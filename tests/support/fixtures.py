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
import time
import uuid

import pytest
from django.conf import settings
from django.core.management.base import CommandError
from django.db import OperationalError, connection
from django.test import TransactionTestCase

from celery_app import app as celery_app
from tests.support.workers import WorkerProcess, realpath_available


def pytest_configure(config):
    _flush_retried_on_deadlock()


def _flush_retried_on_deadlock():
    """A test's TRUNCATE takes every table's lock one by one; a step of the session's worker still finishing the test's
    last tenant may hold one of them while it waits for another, and PostgreSQL then breaks the deadlock by failing
    the flush. The step is over a moment later, so the flush is tried again."""
    original = TransactionTestCase._fixture_teardown
    if getattr(original, "retries_deadlocks", False):
        return

    def teardown(self):
        for attempt in range(5):
            try:
                return original(self)
            except CommandError as exc:
                cause = exc.__cause__
                if attempt == 4 or not (isinstance(cause, OperationalError) and "deadlock" in str(cause)):
                    raise
                time.sleep(0.5)

    teardown.retries_deadlocks = True
    TransactionTestCase._fixture_teardown = teardown


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


@pytest.fixture(autouse=True)
def session_worker_settles(request):
    """The session's worker outlives each test: a test that returns while its tenants are still provisioning
    (``--no-wait``, a batch left running) would have them flushed from under the worker's steps. Before the flush,
    their runs are cancelled and the worker's sessions are given a moment to go quiet."""
    if "worker" not in request.fixturenames:
        yield
        return
    # Requested here so that this teardown runs before the database's flush.
    request.getfixturevalue("_django_db_helper")
    yield
    settle_session_worker()


def settle_session_worker(timeout: float = 15.0):
    # Imported here: this plugin module is loaded before Django's apps are.
    from moran.errors import NoActiveRun
    from provisioning.models import Onboarding, OnboardingStatus
    from provisioning.runs import onboarding_cancel

    for onboarding in Onboarding.objects.filter(status=OnboardingStatus.IN_PROGRESS):
        try:
            onboarding_cancel(onboarding=onboarding, requested_by="the test's teardown")
        except NoActiveRun:
            pass
    deadline = time.monotonic() + timeout
    quiet_since = None
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            # Another session of this database inside a statement or a transaction, or holding a lease or a slot.
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity a WHERE a.datname = current_database()"
                " AND a.pid <> pg_backend_pid() AND (a.state = 'active' OR a.state LIKE 'idle in transaction%'"
                " OR EXISTS (SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.locktype = 'advisory'))"
            )
            busy = cursor.fetchone()[0]
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= 0.3:
            return
        time.sleep(0.05)
