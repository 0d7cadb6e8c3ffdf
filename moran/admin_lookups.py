"""No admin changelist filters on a secret.

Django's changelist turns any query parameter into a lookup on a local field (``?api_secret__startswith=S``), and
the row count it shows answers "is the guess right?": a view-only user could read a secret one character at a time.
:class:`SecretLookupGuard` refuses (400) every lookup that reaches a secret field, directly or through relations,
whatever the value, so the page is the same for a right and a wrong guess.
"""

from __future__ import annotations

from django.core.exceptions import FieldDoesNotExist
from django.db.models.constants import LOOKUP_SEP

#: Field names that hold a secret or a hash of one, on any model.
SECRET_FIELD_NAMES = frozenset({"api_secret", "api_secret_encrypted", "password", "key_hash"})


def lookup_reaches_secret(model, lookup: str) -> bool:
    for part in lookup.split(LOOKUP_SEP):
        if part in SECRET_FIELD_NAMES:
            return True
        try:
            field = model._meta.get_field(part)
        except FieldDoesNotExist:
            return False
        if not field.is_relation or field.related_model is None:
            return False
        model = field.related_model
    return False


class SecretLookupGuard:
    """A ModelAdmin mixin: ``lookup_allowed`` is False for any lookup reaching a secret field (Django answers 400)."""

    def lookup_allowed(self, lookup, value, request):
        if lookup_reaches_secret(self.model, lookup):
            return False
        return super().lookup_allowed(lookup, value, request)
