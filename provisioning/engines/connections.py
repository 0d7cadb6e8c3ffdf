"""Engine connection services: register (or change) where tenants are provisioned, after checking the engine.

The secret is write-only: it is saved, sent to the engine in the Authorization header, and never returned, printed or
put in a message.
"""

from __future__ import annotations

import logging

from django.core.exceptions import ValidationError
from django.core.validators import URLValidator, validate_slug
from django.db import transaction

from moran.encryption import secret_rotate
from moran.errors import DomainError, InvalidInput
from provisioning.engines import engine_for
from provisioning.engines.errors import EngineError
from provisioning.steps import EngineCheck, StepContext, StepFailed
from tenants.models import EngineConnection

logger = logging.getLogger("moran.engines")


class EngineCheckFailed(InvalidInput):
    """The engine check (step 0) refused the connection: unreachable, bad credentials, no ERPNext 15, setup wizard
    not completed."""


def _look(connection: EngineConnection) -> dict:
    """Step 0's read-only look (reachable, credentials, ERPNext version, setup complete): what it found. Outside any
    transaction; nothing is created in the engine."""
    return EngineCheck().look(StepContext(engine=engine_for(connection), spec=None)).found


def engine_check(*, connection: EngineConnection) -> dict:
    """The engine check against a connection (saved or not): what it found, or EngineCheckFailed."""
    try:
        return _look(connection)
    except (StepFailed, EngineError) as exc:
        raise EngineCheckFailed(f"engine check of '{connection.name}' failed: {exc.message}") from None


def engine_connection_test(*, connection: EngineConnection) -> tuple[bool, str]:
    """The engine check for an operator's button: ``(ok, message)``, never an exception. The message never holds a
    credential."""
    try:
        found = _look(connection)
    except DomainError as exc:  # the stored secret does not open with the configured keys
        return False, f"{connection.name}: {exc.message}"
    except ImportError:
        return (
            False,
            f"{connection.name}: the {connection.get_kind_display()} engine client is not available in this installation",
        )
    except StepFailed as exc:
        return False, f"{connection.name}: {exc.message}"
    except EngineError as exc:
        status = f" (HTTP {exc.status})" if exc.status else ""
        return False, f"{connection.name}: {exc.exc_type}{status}: {exc.message}"
    except Exception as exc:
        # An operator's button must answer, not crash; the type only, as an unknown message might quote a credential.
        logger.exception("engine check of %s crashed", connection.name)
        return False, f"{connection.name}: the engine check failed unexpectedly ({type(exc).__name__}); see the logs"
    versions = ", ".join(f"{k.split('_')[0]} {v}" for k, v in found.items() if k.endswith("_version") and v)
    return True, f"{connection.name}: reachable as {found.get('user') or 'unknown user'}; {versions}; setup complete"


def engine_register(
    *,
    name: str,
    base_url: str,
    api_key: str,
    api_secret: str,
    verify_tls: bool = True,
    connect_timeout: float | None = None,
    read_timeout: float | None = None,
    max_concurrency: int | None = None,
) -> tuple[EngineConnection, dict, bool]:
    """Check an ERPNext engine and save its connection (updating the one of that name). Returns the connection, what
    the check found, and whether it was created. Nothing is saved when the check fails.

    The check talks to the engine before anything is written, outside any transaction."""
    errors = {}
    try:
        validate_slug(name or "")
    except ValidationError:
        errors["name"] = ["Use letters, digits, hyphens and underscores"]
    try:
        URLValidator(schemes=["http", "https"])(base_url or "")
    except ValidationError:
        errors["base_url"] = ["An http:// or https:// URL, e.g. https://erp.example.com"]
    if not (api_key or "").strip():
        errors["api_key"] = ["The API key of a System Manager user is required"]
    if not api_secret:
        errors["api_secret"] = ["The API secret is required"]
    for field, value in (("connect_timeout", connect_timeout), ("read_timeout", read_timeout)):
        if value is not None and value <= 0:
            errors[field] = ["A number of seconds above 0"]
    errors.update(_max_concurrency_errors(max_concurrency))
    _raise_invalid(errors)
    connection = EngineConnection.objects.filter(name=name).first() or EngineConnection(name=name)
    if connection.pk and connection.kind != EngineConnection.Kind.ERPNEXT:
        raise InvalidInput(f"Engine '{name}' is a {connection.kind} engine; choose another name")
    connection.kind = EngineConnection.Kind.ERPNEXT
    connection.base_url = base_url.rstrip("/")
    connection.api_key = api_key.strip()
    connection.api_secret = api_secret
    connection.verify_tls = verify_tls
    if connect_timeout is not None:
        connection.connect_timeout = connect_timeout
    if read_timeout is not None:
        connection.read_timeout = read_timeout
    if max_concurrency is not None:
        connection.max_concurrency = max_concurrency
    found = engine_check(connection=connection)
    created = connection.pk is None
    connection.save()
    return connection, found, created


def engine_register_sandbox(*, name: str, max_concurrency: int | None = None) -> tuple[EngineConnection, bool]:
    """Save a sandbox engine (updating the one of that name), so operators can rehearse a batch without a server.
    Returns the connection and whether it was created."""
    errors = {}
    try:
        validate_slug(name or "")
    except ValidationError:
        errors["name"] = ["Use letters, digits, hyphens and underscores"]
    errors.update(_max_concurrency_errors(max_concurrency))
    _raise_invalid(errors)
    connection = EngineConnection.objects.filter(name=name).first() or EngineConnection(name=name)
    if connection.pk and connection.kind != EngineConnection.Kind.SANDBOX:
        raise InvalidInput(f"Engine '{name}' is a {connection.kind} engine; choose another name")
    connection.kind = EngineConnection.Kind.SANDBOX
    if max_concurrency is not None:
        connection.max_concurrency = max_concurrency
    created = connection.pk is None
    connection.save()
    return connection, created


def _max_concurrency_errors(value: int | None) -> dict:
    field = EngineConnection._meta.get_field("max_concurrency")
    if value is None:
        return {}
    try:
        field.run_validators(value)
    except ValidationError:
        return {"max_concurrency": ["A whole number of steps from 1 to 64"]}
    return {}


def _raise_invalid(errors: dict) -> None:
    if errors:
        raise InvalidInput(
            "Invalid engine: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()), fields=errors
        )


def engine_secrets_rotate() -> tuple[int, int]:
    """Re-encrypt every stored engine secret under the first key of MORAN_SECRET_KEYS. Returns (re-encrypted, without a
    secret). Raises SecretUnreadable, changing nothing, when a secret opens with none of the keys: every row is
    decrypted before any is written, so a half-rotated table never hides the row that failed."""
    with transaction.atomic():
        rows = list(EngineConnection.objects.select_for_update().order_by("pk"))
        rotated = {
            row.pk: secret_rotate(row.api_secret_encrypted, label=f"API secret of engine '{row.name}'")
            for row in rows
            if row.api_secret_encrypted
        }
        for pk, token in rotated.items():
            EngineConnection.objects.filter(pk=pk).update(api_secret_encrypted=token)
    return len(rotated), len(rows) - len(rotated)
