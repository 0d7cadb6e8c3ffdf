"""Advisory locks of the step executor: a step's lease (at most one delivery of a step of a run executes at a time)
and the lock per engine that the one step sharing an engine-wide document takes.

Session locks, not transactions, so that nothing a step writes is rolled back with them and a killed worker frees
them at once (PostgreSQL drops a session's advisory locks when the session ends).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import zlib

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection

from provisioning.rowsql import execute


def step_lease_key(run_id, step_name: str) -> int:
    """The advisory-lock key of one step of one run (a signed 64-bit integer, as PostgreSQL wants)."""
    digest = hashlib.blake2b(f"moran:step:{run_id}:{step_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@contextlib.contextmanager
def step_lease(run_id, step_name: str, *, wait: float | None = None):
    """Hold the lease of a step of a run while it executes: a PostgreSQL session advisory lock, which the server
    releases by itself when the holder's session ends — a killed worker (SIGKILL of the child or of the whole worker)
    frees it at once, no timeout to wait for. Yields False when another session holds it after ``wait`` seconds
    (a short wait covers the moment between a worker's death and the server noticing it). SQLite (the embedded mode)
    has a single process and needs no lease."""
    if connection.vendor != "postgresql":
        yield True
        return
    key = step_lease_key(run_id, step_name)
    held = lease_wait(key, settings.STEP_LEASE_WAIT if wait is None else wait)
    try:
        yield held
    finally:
        if held:
            advisory_unlock(key)


def lease_wait(key: int, wait: float, *, tried: bool = False) -> bool:
    """Try the session advisory lock ``key`` until it is held or ``wait`` seconds passed (``tried``: the first try
    was made already, in a statement of the caller's)."""
    deadline = time.monotonic() + wait
    if not tried and try_advisory_locks(key)[0]:
        return True
    while time.monotonic() < deadline:
        time.sleep(0.25)
        if try_advisory_locks(key)[0]:
            return True
    return False


def try_advisory_locks(*keys: int) -> list[bool]:
    """Try session advisory locks, in one statement (left to right): one round trip, whatever their number."""
    return list(execute("SELECT " + ", ".join(["pg_try_advisory_lock(%s)"] * len(keys)), list(keys)))


def advisory_unlock(*keys: int) -> None:
    """Give session advisory locks back, in one statement. A session that is gone has given them back already."""
    if not keys:
        return
    try:
        execute("SELECT " + ", ".join(["pg_advisory_unlock(%s)"] * len(keys)), list(keys))
    except (OperationalError, InterfaceError):
        pass


def step_lease_free(run_id, step_name: str) -> bool:
    """True when no session holds the lease of this step of this run (for the sweeper: a step past its deadline whose
    lease is still held is being run by a live session and is left alone). A read of ``pg_locks``, not a try-lock,
    so that two sweepers probing at once do not see each other's probe as a holder."""
    if connection.vendor != "postgresql":
        return True
    key = step_lease_key(run_id, step_name)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = ((%s::bigint >> 32) & 4294967295)::oid AND objid = (%s::bigint & 4294967295)::oid)",
            [key, key],
        )
        return cursor.fetchone()[0]


@contextlib.contextmanager
def engine_lock(engine_id):
    """A lock per engine connection that is not a transaction (so nothing a step writes is rolled back with it):
    a PostgreSQL session advisory lock. SQLite (the embedded mode) serializes its writers anyway."""
    if connection.vendor != "postgresql":
        yield
        return
    key = zlib.crc32(f"moran:engine:{engine_id}".encode())
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [key])
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
