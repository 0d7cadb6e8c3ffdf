"""The domain error family. Services raise these; the API maps them to HTTP once (status and a JSON body), the CLI
to an exit code and one line on stderr. Services never import DRF."""


class DomainError(Exception):
    http_status = 400
    code = "invalid"

    def __init__(self, message: str, *, fields: dict | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}

    def as_dict(self) -> dict:
        body = {"error": self.code, "detail": self.message}
        if self.fields:
            body["fields"] = self.fields
        return body


class InvalidInput(DomainError):
    http_status = 400
    code = "invalid"


class NotFound(DomainError):
    http_status = 404
    code = "not_found"


class Conflict(DomainError):
    http_status = 409
    code = "conflict"


class RunActive(Conflict):
    code = "run_active"


class NothingToContinue(Conflict):
    code = "nothing_to_continue"


class NoActiveRun(Conflict):
    code = "no_active_run"


# --- The operators' API ---------------------------------------------------------------------------------
class InvalidCredentials(DomainError):
    """A log-in with an unknown email or a wrong password (never says which)."""

    http_status = 401
    code = "invalid_credentials"
