"""What the OpenAPI schema says about errors: the one error body, and which statuses an operation can answer."""

from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, inline_serializer
from rest_framework import serializers

#: what a ``<tenant_id>`` in a path may be: a UUID or a slug (the schema says so too).
TENANT_ID_REGEX = r"[A-Za-z0-9][A-Za-z0-9-]{0,99}"

TENANT_ID = OpenApiParameter(
    "tenant_id",
    str,
    OpenApiParameter.PATH,
    description="the tenant's id (UUID) or slug",
    pattern=f"^{TENANT_ID_REGEX}$",
)

PAGE_PARAMETERS = [
    OpenApiParameter("page", {"type": "integer", "minimum": 1}, description="page number, from 1"),
    OpenApiParameter("page_size", {"type": "integer", "minimum": 1}, description="items per page (cut to the maximum)"),
]


class ErrorOutputSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="a stable code: invalid, not_authenticated, not_found, run_active, …")
    detail = serializers.CharField(help_text="a message for people")
    fields = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text="field errors (400 only): field name → messages",
    )


_DESCRIPTIONS = {
    400: "Bad input (field errors in `fields`)",
    401: "No token, or an invalid or expired one",
    403: "Not allowed (operators only)",
    404: "Unknown tenant, or one the caller may not see",
    409: "A run is active, nothing to continue, or no run to cancel",
    415: "Unsupported media type (send JSON)",
    429: "Too many attempts; see Retry-After",
}


def error_responses(*statuses: int) -> dict:
    """The ``responses`` entries for these error statuses, for ``extend_schema``."""
    return {status: OpenApiResponse(ErrorOutputSerializer, description=_DESCRIPTIONS[status]) for status in statuses}


class AutoSchema(openapi.AutoSchema):
    """Component names from the serializer's qualified name, so that the nested ``InputSerializer`` /
    ``OutputSerializer`` classes of each API view (the styleguide's habit) get names of their own:
    ``LoginApi.InputSerializer`` → ``LoginApiInput``."""

    def get_serializer_name(self, serializer, direction):
        parts = type(serializer).__qualname__.split(".")
        return "".join(part.removesuffix("Serializer") for part in parts if part != "<locals>")


def paginated(serializer_class, *, name: str):
    """The schema of a page of ``serializer_class`` items as the pagination classes return it."""
    return inline_serializer(
        name=name,
        fields={
            "count": serializers.IntegerField(help_text="items in all pages"),
            "next": serializers.URLField(allow_null=True),
            "previous": serializers.URLField(allow_null=True),
            "results": serializer_class(many=True),
        },
    )
