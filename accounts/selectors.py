from django.contrib.auth import get_user_model

from moran.errors import InvalidInput


def user_get_by_email(*, email: str, field: str = "owner_email"):
    """The one active user with this email (case-insensitive); a field error otherwise."""
    users = list(get_user_model().objects.filter(email__iexact=email.strip(), is_active=True)[:2])
    if len(users) == 1:
        return users[0]
    message = f"No active user has the email '{email}'" if not users else f"Several users have the email '{email}'"
    raise InvalidInput(message, fields={field: [message]})


def user_label(*, user) -> str:
    """How a user is named in runs and logs ("continue requested by ...")."""
    return user.email or user.get_username()
