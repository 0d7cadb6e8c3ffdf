"""The engine error family.

Every engine (the ERPNext REST client and the sandbox) raises these, classified the way the brief says: by HTTP status
and Frappe ``exc_type``. Steps interpret 404/409/417; transient errors are retried by Celery; the rest fail the step.

Messages are for operators: the engine's human message, never a server traceback and never a credential.
"""

from __future__ import annotations


class EngineError(Exception):
    """Base class. ``status`` is the engine's HTTP status (or None when no response came back)."""

    transient = False
    default_type = "EngineError"

    def __init__(self, message: str, *, status: int | None = None, exc_type: str | None = None, retry_after=None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.exc_type = exc_type or self.default_type
        self.retry_after = retry_after

    def as_step_error(self) -> dict:
        return {"type": self.exc_type, "message": self.message, "engine_status": self.status}

    def __repr__(self):
        return f"{type(self).__name__}({self.message!r}, status={self.status}, exc_type={self.exc_type!r})"


class EngineTransientError(EngineError):
    """502/503/504, 429, timeouts, connection errors, database deadlocks: worth retrying with backoff."""

    transient = True
    default_type = "EngineUnavailable"


class EngineAuthError(EngineError):
    """401/403: the credentials are wrong or lack a permission. Retrying does not help."""

    default_type = "AuthenticationError"


class EngineBadRequestError(EngineError):
    """A deterministic 500 (JSONDecodeError, AttributeError, ...): our request is wrong; never retried."""

    default_type = "BadRequest"


class EngineNotFoundError(EngineError):
    default_type = "DoesNotExistError"


class EngineConflictError(EngineError):
    """409: a duplicate name (``DuplicateEntryError``) or an overlap (``NameError`` for fiscal years)."""

    default_type = "DuplicateEntryError"

    @property
    def is_duplicate(self) -> bool:
        return self.exc_type == "DuplicateEntryError"


class EngineValidationError(EngineError):
    """417: the engine refused the document (mandatory field, bad link, abbreviation taken, ...)."""

    default_type = "ValidationError"


def concurrent_company_error(doctype: str, error: EngineError) -> EngineError:
    """A Company create that lost ERPNext's concurrent-creation race comes back as a transient error.

    ERPNext's ``Company.on_update`` adds the new company's row to the one shared "Cash" Mode of Payment (loaded
    ``for_update``) and validates every row's account under REPEATABLE READ: a company committed by another request
    meanwhile has a row whose account this transaction cannot see, and the create fails with 417
    ``LinkValidationError`` "Could not find Row #N: Default Account: Cash - <other abbr>". Nothing was created, and the
    same create succeeds a moment later. Any other error is returned unchanged."""
    if (
        doctype == "Company"
        and isinstance(error, EngineValidationError)
        and error.exc_type == "LinkValidationError"
        and "Default Account" in error.message
    ):
        return EngineTransientError(
            f"the engine refused the company while another company was being created ({error.message}); "
            "it will be created again",
            status=error.status,
            exc_type=error.exc_type,
        )
    return error
