from rest_framework.permissions import BasePermission


class IsOperator(BasePermission):
    """Staff operators act on tenants (create, continue, retry, cancel). Checked on the object, after the tenant
    was looked up among those the caller may see: a tenant's owner gets 403 on their own tenant, anyone else 404."""

    message = "Only operators (staff users) may do this"

    def has_object_permission(self, request, view, obj):
        return bool(request.user and request.user.is_staff)


class IsOperatorForWrites(BasePermission):
    """Reads for every authenticated user; writes (POST) for operators only."""

    message = IsOperator.message

    def has_permission(self, request, view):
        if request.method in ("GET", "HEAD", "OPTIONS"):
            return True
        return bool(request.user and request.user.is_staff)
