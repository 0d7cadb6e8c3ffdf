"""Secrets at rest (engine API secrets): Fernet tokens under the keys of ``MORAN_SECRET_KEYS``.

The first key encrypts; every key decrypts, so a key is rotated by putting a new one first, re-encrypting the rows
(``manage.py rotate_engine_secrets``) and then dropping the old one. Fernet authenticates as well as encrypts: a row
changed by hand, or encrypted under a key that is no longer configured, is refused instead of sending garbage to an
engine.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from moran.errors import DomainError


class SecretUnreadable(DomainError):
    """A stored secret that none of the configured keys opens (a key was dropped before rotating, or the row was
    edited by hand). The message never includes the stored value."""

    http_status = 500
    code = "secret_unreadable"


def _fernet() -> MultiFernet:
    keys = settings.MORAN_SECRET_KEYS
    if not keys:
        raise ImproperlyConfigured("MORAN_SECRET_KEYS is not set: engine secrets cannot be encrypted or read")
    try:
        return MultiFernet([Fernet(key) for key in keys])
    except ValueError:
        raise ImproperlyConfigured(
            "MORAN_SECRET_KEYS holds a value that is not a Fernet key (32 url-safe base64-encoded bytes)"
        ) from None


def secret_encrypt(plaintext: str) -> str:
    """The Fernet token of ``plaintext`` under the first key; "" stays "" (no secret stored)."""
    if not plaintext:
        return ""
    return _fernet().encrypt(plaintext.encode()).decode()


def secret_decrypt(token: str, *, label: str = "secret") -> str:
    if not token:
        return ""
    try:
        return _fernet().decrypt(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"The stored {label} cannot be decrypted with the configured MORAN_SECRET_KEYS: "
            "add the key it was encrypted with (or set the secret again)"
        ) from None


def secret_rotate(token: str, *, label: str = "secret") -> str:
    """The same secret encrypted under the first key (a no-op for "")."""
    if not token:
        return ""
    try:
        return _fernet().rotate(token.encode()).decode()
    except InvalidToken:
        raise SecretUnreadable(
            f"The stored {label} cannot be decrypted with the configured MORAN_SECRET_KEYS: nothing was changed"
        ) from None


def keys_problem(keys: list[str]) -> str | None:
    """What is wrong with a list of keys (for the system check), or None."""
    for n, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError:
            return f"key {n} of MORAN_SECRET_KEYS is not a Fernet key (32 url-safe base64-encoded bytes)"
    return None
