"""/api/provisioning/tenants/<tenant_id>/{status,logs,continue,retry,cancel}.

Each view looks the onboarding up among the tenants the caller may see (others are 404), checks what the caller may
do with it (operators act, owners read: 403), calls the service or selector, and answers with the status body of
``onboarding_status`` — the same body as ``GET …/status`` and ``manage.py provisioning_status --json``.
"""

from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import user_label
from moran.api.filters import QueryFilterSerializer
from moran.api.pagination import LogPagination
from moran.api.permissions import IsOperator
from moran.api.schema import PAGE_PARAMETERS, TENANT_ID, error_responses, paginated
from provisioning.models import OnboardingStatus, StepLog, StepStatus
from provisioning.selectors import log_message_for, onboarding_get, onboarding_logs, onboarding_status
from provisioning.services import onboarding_cancel, onboarding_continue, onboarding_retry
from provisioning.steps import STEP_NAMES


class StepErrorSerializer(serializers.Serializer):
    type = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True)
    engine_status = serializers.IntegerField(allow_null=True, required=False)


class StatusOutputSerializer(serializers.Serializer):
    """Documents the body of ``onboarding_status`` (the views return that dict as it is)."""

    class ErrorSerializer(serializers.Serializer):
        step = serializers.ChoiceField(choices=STEP_NAMES)
        type = serializers.CharField(allow_null=True)
        message = serializers.CharField(allow_null=True)
        engine_status = serializers.IntegerField(allow_null=True)
        at = serializers.CharField(allow_null=True, help_text="ISO 8601, UTC")

    class StepSerializer(serializers.Serializer):
        name = serializers.ChoiceField(choices=STEP_NAMES)
        optional = serializers.BooleanField()
        status = serializers.ChoiceField(choices=StepStatus.choices)
        attempts = serializers.IntegerField()
        started_at = serializers.CharField(allow_null=True)
        finished_at = serializers.CharField(allow_null=True)
        error = StepErrorSerializer(allow_null=True)
        result = serializers.JSONField(allow_null=True, help_text="what the step found or created, by engine name")

    tenant_id = serializers.UUIDField()
    tenant = serializers.CharField(help_text="the tenant's slug")
    status = serializers.ChoiceField(choices=OnboardingStatus.choices)
    steps_completed = serializers.IntegerField()
    total_steps = serializers.IntegerField()
    progress = serializers.IntegerField(help_text="completed or skipped steps ÷ total steps × 100, rounded")
    current_step = serializers.CharField(allow_null=True)
    run_id = serializers.UUIDField(allow_null=True, help_text="the run in charge; null when none is active")
    started_at = serializers.CharField(allow_null=True)
    finished_at = serializers.CharField(allow_null=True)
    errors = ErrorSerializer(many=True)
    steps = StepSerializer(many=True)


class OnboardingStatusApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="provisioning_status",
        summary="The provisioning status of a tenant",
        parameters=[TENANT_ID],
        responses={200: StatusOutputSerializer, **error_responses(401, 404)},
    )
    def get(self, request, tenant_id):
        onboarding = onboarding_get(tenant_id=tenant_id, visible_to=request.user)
        return Response(onboarding_status(onboarding=onboarding))


class OnboardingLogsApi(APIView):
    permission_classes = [IsAuthenticated]

    class FilterSerializer(QueryFilterSerializer):
        step = serializers.ChoiceField(choices=STEP_NAMES, required=False)
        run = serializers.UUIDField(required=False, help_text="a run id (see run_id in the status)")

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        at = serializers.DateTimeField(source="created_at")
        run_id = serializers.UUIDField(allow_null=True)
        step = serializers.CharField(help_text="empty for lines about the run as a whole")
        attempt = serializers.IntegerField()
        level = serializers.ChoiceField(choices=StepLog.Level.choices)
        message = serializers.CharField()

    @extend_schema(
        operation_id="provisioning_logs",
        summary="The step log lines of a tenant, newest last",
        parameters=[TENANT_ID, FilterSerializer, *PAGE_PARAMETERS],
        responses={200: paginated(OutputSerializer, name="LogPage"), **error_responses(400, 401, 404)},
    )
    def get(self, request, tenant_id):
        onboarding = onboarding_get(tenant_id=tenant_id, visible_to=request.user)
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        lines = onboarding_logs(
            onboarding=onboarding, step=filters.validated_data.get("step"), run_id=filters.validated_data.get("run")
        )
        paginator = LogPagination()
        page = paginator.paginate_queryset(lines, request, view=self)
        rows = self.OutputSerializer(page, many=True).data
        for row in rows:
            row["message"] = log_message_for(message=row["message"], viewer=request.user)
        return paginator.get_paginated_response(rows)


class _OnboardingActionApi(APIView):
    """POST …/<action>: operators only. ``service`` is the provisioning service that acts (it raises the 409s)."""

    permission_classes = [IsAuthenticated, IsOperator]
    service: staticmethod
    success_status = status.HTTP_202_ACCEPTED

    def post(self, request, tenant_id):
        onboarding = onboarding_get(tenant_id=tenant_id, visible_to=request.user)
        self.check_object_permissions(request, onboarding)
        self.service(onboarding=onboarding, requested_by=user_label(user=request.user))
        onboarding.refresh_from_db()
        return Response(onboarding_status(onboarding=onboarding), status=self.success_status)


def _action_schema(operation_id, summary, success):
    return extend_schema(
        operation_id=operation_id,
        summary=summary,
        parameters=[TENANT_ID],
        request=None,
        responses={success: StatusOutputSerializer, **error_responses(401, 403, 404, 409)},
    )


class OnboardingContinueApi(_OnboardingActionApi):
    service = staticmethod(onboarding_continue)

    @_action_schema(
        "provisioning_continue", "A new run from the first step that is not completed or skipped (202)", 202
    )
    def post(self, request, tenant_id):
        return super().post(request, tenant_id)


class OnboardingRetryApi(_OnboardingActionApi):
    service = staticmethod(onboarding_retry)

    @_action_schema("provisioning_retry", "A new run of every step from step 0 (202)", 202)
    def post(self, request, tenant_id):
        return super().post(request, tenant_id)


class OnboardingCancelApi(_OnboardingActionApi):
    service = staticmethod(onboarding_cancel)
    success_status = status.HTTP_200_OK

    @_action_schema("provisioning_cancel", "Stop the active run; the onboarding becomes CANCELLED (200)", 200)
    def post(self, request, tenant_id):
        return super().post(request, tenant_id)
