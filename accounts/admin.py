from django.contrib import admin

from accounts.models import ApiToken
from moran.admin_lookups import SecretLookupGuard


@admin.register(ApiToken)
class ApiTokenAdmin(SecretLookupGuard, admin.ModelAdmin):
    """Revoke a token by deleting it. Only a prefix of each token is known here: tokens are stored hashed."""

    list_display = ("prefix", "user", "created_at", "expires_at")
    list_select_related = ("user",)
    search_fields = ("user__email", "user__username", "prefix")
    readonly_fields = ("user", "prefix", "created_at", "expires_at")
    exclude = ("key_hash",)

    def has_add_permission(self, request):
        return False
