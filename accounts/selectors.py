from django.contrib.auth import get_user_model

from accounts.emails import email_canonical, email_is_canonical_form
from moran.errors import InvalidInput


def user_get_by_email(*, email: str, field: str = "owner_email"):
    """The one active user with this email (canonical forms compared, as at log-in); a field error otherwise."""
    canonical = email_canonical(email)
    users = []
    if canonical and email_is_canonical_form(email):
        users = [
            user
            for user in get_user_model().objects.filter(email__iexact=canonical, is_active=True)
            if email_canonical(user.email) == canonical
        ][:2]
    if len(users) == 1:
        return users[0]
    message = f"No active user has the email '{email}'" if not users else f"Several users have the email '{email}'"
    raise InvalidInput(message, fields={field: [message]})


def user_label(*, user) -> str:
    """How a user is named in runs and logs ("continue requested by ...")."""
    return user.email or user.get_username()
