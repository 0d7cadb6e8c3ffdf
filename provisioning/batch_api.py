"""POST /api/tenants/batch and GET /api/tenants/batch/<batch_id>: many tenants at once (operators only).

The view reads the rows (a JSON list, a CSV upload in ``file``, or a ``text/csv`` body), and the batch services
validate, create and start them: the same rules and the same messages as ``manage.py provision_batch``.
"""

from __future__ import annotations

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.parsers import BaseParser, JSONParser, MultiPartParser
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import user_label
from moran.api.schema import error_responses
from moran.errors import InvalidInput
from provisioning.batches import (
    DEFAULT_CONCURRENCY,
    MAX_CONCURRENCY,
    batch_create,
    batch_get,
    batch_rows_from_csv,
    batch_rows_from_list,
    batch_start,
    batch_status,
    batch_validate,
)
from provisioning.models import BatchItem, OnboardingStatus, ProvisioningBatch
from tenants.services import engine_get

#: a CSV upload larger than this is refused before it is read (1000 rows fit many times over).
MAX_CSV_BYTES = 1_000_000


class IsOperatorOnly(BasePermission):
    """Batches are the operators' tool: any other authenticated user gets 403, reads included."""

    message = "Only operators (staff users) may do this"

    def has_permission(self, request, view):
        return bool(request.user and request.user.is_staff)


class CsvTextParser(BaseParser):
    """A ``text/csv`` body: handed to the view as text."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read(MAX_CSV_BYTES + 1) if stream else b""
        return {"csv": raw}


class BatchStatusOutputSerializer(serializers.Serializer):
    class TenantSerializer(serializers.Serializer):
        tenant = serializers.CharField(help_text="the tenant's slug")
        line = serializers.IntegerField(help_text="its CSV line (header = 1), or 1 + its index in a JSON list")
        action = serializers.ChoiceField(choices=BatchItem.Action.choices, help_text="what the batch does with it")
        status = serializers.ChoiceField(choices=OnboardingStatus.choices)
        progress = serializers.IntegerField()
        current_step = serializers.CharField(allow_null=True)
        started = serializers.BooleanField(help_text="false while it waits for a free place")

    class FailureSerializer(TenantSerializer):
        class ErrorSerializer(serializers.Serializer):
            step = serializers.CharField()
            type = serializers.CharField(allow_null=True)
            message = serializers.CharField(allow_null=True)

        step = serializers.CharField(allow_null=True, help_text="the step it stopped at")
        error = ErrorSerializer(allow_null=True)

    id = serializers.UUIDField()
    engine = serializers.CharField()
    concurrency = serializers.IntegerField()
    created_by = serializers.CharField()
    created_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    finished = serializers.BooleanField(help_text="every tenant was started and none is in progress")
    total = serializers.IntegerField()
    done = serializers.IntegerField(help_text="tenants that ended (COMPLETED, PARTIAL, FAILED or CANCELLED)")
    progress = serializers.IntegerField(help_text="the tenants' mean step progress, 0-100")
    counts = serializers.DictField(child=serializers.IntegerField(), help_text="tenants per onboarding status")
    failures = FailureSerializer(many=True, help_text="tenants that ended without completing, with their error")
    tenants = TenantSerializer(many=True)


class BatchRowSerializer(serializers.Serializer):
    """One tenant of a batch (the columns of the CSV file). For the schema: the batch services validate."""

    slug = serializers.CharField()
    company = serializers.CharField()
    abbr = serializers.CharField()
    currency = serializers.CharField()
    country = serializers.CharField()
    admin_email = serializers.CharField()
    name = serializers.CharField(required=False)
    admin_first_name = serializers.CharField(required=False)
    cost_centers = serializers.ListField(child=serializers.CharField(), required=False)
    warehouses = serializers.ListField(child=serializers.CharField(), required=False)


class BatchUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="the CSV file")


BATCH_PARAMETERS = [
    OpenApiParameter("engine", str, description="engine connection name (default: the default engine)"),
    OpenApiParameter(
        "concurrency",
        int,
        description=f"tenants provisioning at once, 1-{MAX_CONCURRENCY} (default {DEFAULT_CONCURRENCY})",
    ),
]

EXAMPLE_STATUS = {
    "id": "0d6c5b2e-9a53-4f5e-bb1e-6d1f0b7c2a11",
    "engine": "sandbox",
    "concurrency": 4,
    "created_by": "operator@moran.example",
    "created_at": "2026-11-30T10:00:00Z",
    "finished_at": None,
    "finished": False,
    "total": 2,
    "done": 1,
    "progress": 70,
    "counts": {"PENDING": 0, "IN_PROGRESS": 0, "COMPLETED": 1, "PARTIAL": 1, "FAILED": 0, "CANCELLED": 0},
    "failures": [
        {
            "tenant": "hooli",
            "line": 3,
            "action": "create",
            "status": "PARTIAL",
            "progress": 40,
            "current_step": "step_4_cost_centers",
            "started": True,
            "step": "step_4_cost_centers",
            "error": {"step": "step_4_cost_centers", "type": "ValidationError", "message": "Parent cost center …"},
        }
    ],
    "tenants": [],
}


class BatchCreateApi(APIView):
    permission_classes = [IsAuthenticated, IsOperatorOnly]
    parser_classes = [JSONParser, MultiPartParser, CsvTextParser]

    @extend_schema(
        operation_id="tenants_batch_create",
        summary="Create and provision many tenants, at most `concurrency` at once (operators)",
        description="A JSON list of rows, a CSV upload (`multipart/form-data`, field `file`) or a `text/csv` body "
        "with the header `slug,company,abbr,currency,country,admin_email` plus optional `name`, "
        "`admin_first_name`, `cost_centers`, `warehouses` (`;`-separated). Every row is validated first: a 400 "
        "lists every problem by place (`line 3`, `rows[2]`) in `fields`, and nothing is created. Rows of existing "
        "tenants with the same data are re-runs: COMPLETED ones are left alone, PARTIAL, FAILED and CANCELLED ones "
        "continued. The batch goes on with no client attached.",
        parameters=BATCH_PARAMETERS,
        request={"application/json": BatchRowSerializer(many=True), "multipart/form-data": BatchUploadSerializer},
        responses={202: BatchStatusOutputSerializer, **error_responses(400, 401, 403, 415)},
        examples=[
            OpenApiExample(
                # drf-spectacular wraps a list body's example in the list itself: this is the list's one row.
                "A list of rows",
                request_only=True,
                media_type="application/json",
                value={
                    "slug": "umbrella",
                    "company": "Umbrella Corp",
                    "abbr": "UMBR",
                    "currency": "USD",
                    "country": "United States",
                    "admin_email": "admin@umbrella.example",
                    "cost_centers": ["Operations"],
                    "warehouses": ["Returns"],
                },
            ),
            OpenApiExample("A batch just started", response_only=True, status_codes=["202"], value=EXAMPLE_STATUS),
        ],
    )
    def post(self, request):
        rows = self._rows(request)
        engine = engine_get(name=request.query_params.get("engine") or None)
        concurrency = self._concurrency(request)
        validated = batch_validate(rows=rows, engine=engine)
        batch = batch_create(
            rows=validated,
            engine=engine,
            concurrency=concurrency,
            created_by=request.user,
            requested_by=user_label(user=request.user),
            source=ProvisioningBatch.Source.API,
            filename=getattr(request.data.get("file"), "name", "") if hasattr(request.data, "get") else "",
        )
        # Not inside a transaction: the runs are enqueued as each start commits.
        batch_start(batch=batch)
        body = BatchStatusOutputSerializer(batch_status(batch=batch_get(batch_id=batch.pk))).data
        return Response(body, status=status.HTTP_202_ACCEPTED, headers={"Location": f"/api/tenants/batch/{batch.pk}"})

    def _rows(self, request):
        content_type = (request.content_type or "").split(";")[0].strip().lower()
        if content_type == "text/csv":
            return self._csv(request.data["csv"])
        if content_type == "multipart/form-data":
            upload = request.data.get("file")
            if not hasattr(upload, "read"):
                raise InvalidInput(
                    "Send the CSV file in the field 'file'", fields={"file": ["This field is required."]}
                )
            return self._csv(upload.read(MAX_CSV_BYTES + 1))
        return batch_rows_from_list(rows=request.data)

    def _csv(self, raw: bytes):
        if len(raw) > MAX_CSV_BYTES:
            raise InvalidInput(
                f"The file is larger than {MAX_CSV_BYTES} bytes", fields={"file": [f"at most {MAX_CSV_BYTES} bytes"]}
            )
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput("The file is not UTF-8 text", fields={"file": ["not UTF-8 text"]}) from None
        return batch_rows_from_csv(text=text)

    def _concurrency(self, request) -> int:
        raw = request.query_params.get("concurrency")
        if raw in (None, ""):
            return DEFAULT_CONCURRENCY
        try:
            return int(raw)
        except ValueError:
            raise InvalidInput(
                "concurrency must be a whole number", fields={"concurrency": ["a whole number"]}
            ) from None


class BatchDetailApi(APIView):
    permission_classes = [IsAuthenticated, IsOperatorOnly]

    @extend_schema(
        operation_id="tenants_batch_read",
        summary="Where a batch stands: counts per status, progress, the failures with their step and error",
        parameters=[
            OpenApiParameter("batch_id", OpenApiTypes.UUID, OpenApiParameter.PATH, description="the batch's id")
        ],
        responses={200: BatchStatusOutputSerializer, **error_responses(401, 403, 404)},
        examples=[OpenApiExample("A batch half way", response_only=True, status_codes=["200"], value=EXAMPLE_STATUS)],
    )
    def get(self, request, batch_id):
        batch = batch_get(batch_id=batch_id)
        return Response(BatchStatusOutputSerializer(batch_status(batch=batch)).data)
