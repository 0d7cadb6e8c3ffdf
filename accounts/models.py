"""API access tokens: who may call the operators' API, until when.

A token is a random string handed out once at log-in; only its SHA-256 is stored, so the table (or a backup of it)
cannot be replayed. Rows, not signed JWTs: a token can be revoked (log-out, a deactivated user, the admin) and every
web process sees that at once through the database.
"""

from django.conf import settings
from django.db import models


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    key_hash = models.CharField(max_length=64, unique=True)
    # The first characters of the token, to tell tokens apart in the admin without being able to use them.
    prefix = models.CharField(max_length=8)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.prefix}… ({self.user})"
