"""The per-engine company-creation lock as the engines see it: only "give it back now".

:mod:`provisioning.capacity` takes the lock before step 1's attempt begins; the engine gives it back the moment its
Company create returns (ERPNext's race is in the create itself), not at the end of the step. Kept here, below the
steps, so that an engine never imports the capacity services above it.
"""

from __future__ import annotations

import threading

from django.db import InterfaceError, OperationalError, connection

#: the company-creation lock held by this thread's database session (Django's connections are per thread), if any.
_held = threading.local()


def company_held() -> set[int]:
    if not hasattr(_held, "company"):
        _held.company = set()
    return _held.company


def advisory_unlock(key: int) -> None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [key])
    except (OperationalError, InterfaceError):
        pass  # the session is gone, and its locks with it


def company_creation_done() -> None:
    """The engine's Company create call returned (created, refused or failed): give the company-creation lock back
    now, not at the end of the step. Does nothing when this session holds none."""
    held = company_held()
    while held:
        advisory_unlock(held.pop())
