"""Log-in and log-out for the API. Views call these; nothing here knows about HTTP."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.contrib.auth import authenticate, get_user_model
from django.utils import timezone

from accounts.emails import email_canonical, email_is_canonical_form
from accounts.models import ApiToken
from moran.errors import InvalidCredentials


@dataclass(frozen=True)
class IssuedToken:
    token: str  # the only time the plain token exists: it is returned to the caller, never stored or logged
    expires_in: int
    user: object


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def user_authenticate_by_email(*, email: str, password: str):
    """The active user with this email and password, or None.

    The email is compared in its canonical form (``accounts.emails``) on both sides, in Python: the database's
    case-insensitive match only narrows the candidates, because its folding (locale rules) may equate look-alikes.
    An address in a non-canonical form (``opſ@…``) is nobody's. Django's default User does not make emails unique,
    so every matching active user is tried; the password decides. ``authenticate`` goes through the configured
    backends (and refuses inactive users)."""
    User = get_user_model()
    canonical = email_canonical(email)
    candidates = []
    if canonical and email_is_canonical_form(email):
        candidates = [
            user
            for user in User.objects.filter(email__iexact=canonical, is_active=True)
            if email_canonical(user.email) == canonical
        ]
    for candidate in candidates:
        user = authenticate(username=candidate.get_username(), password=password)
        if user is not None:
            return user
    if not candidates:
        # Spend the time of one password hash anyway, so that response times do not tell which emails exist.
        User().set_password(password)
    return None


def token_issue(*, email: str, password: str) -> IssuedToken:
    """A new API token for the user with these credentials. Raises InvalidCredentials (never saying which part was
    wrong). The user's expired tokens are removed on the way."""
    user = user_authenticate_by_email(email=email, password=password)
    if user is None:
        raise InvalidCredentials("Invalid email or password")
    now = timezone.now()
    ApiToken.objects.filter(user=user, expires_at__lte=now).delete()
    token = secrets.token_urlsafe(32)
    ttl = settings.MORAN_API_TOKEN_TTL
    ApiToken.objects.create(
        user=user, key_hash=token_hash(token), prefix=token[:8], expires_at=now + timedelta(seconds=ttl)
    )
    return IssuedToken(token=token, expires_in=ttl, user=user)


def token_user(*, token: str):
    """The user of a valid, unexpired token of an active user, or None."""
    row = (
        ApiToken.objects.select_related("user")
        .filter(key_hash=token_hash(token), expires_at__gt=timezone.now(), user__is_active=True)
        .first()
    )
    return row.user if row else None


def token_revoke(*, token: str) -> None:
    ApiToken.objects.filter(key_hash=token_hash(token)).delete()
