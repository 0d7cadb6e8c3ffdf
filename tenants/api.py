"""GET/POST /api/tenants and GET /api/tenants/<tenant_id>: a view validates, calls a service or selector,
serializes."""

from django.db import transaction
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.selectors import user_get_by_email, user_label
from moran.api.filters import VISIBLE_TEXT, QueryFilterSerializer
from moran.api.pagination import Pagination
from moran.api.permissions import IsOperatorForWrites
from moran.api.schema import PAGE_PARAMETERS, TENANT_ID, error_responses, paginated
from provisioning.models import OnboardingStatus
from provisioning.services import onboarding_start
from provisioning.steps import TOTAL_STEPS
from tenants.selectors import tenant_get_visible, tenant_list
from tenants.services import engine_get, tenant_create


class TenantOutputSerializer(serializers.Serializer):
    class OnboardingSummarySerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=OnboardingStatus.choices)
        steps_completed = serializers.IntegerField()
        total_steps = serializers.SerializerMethodField()
        progress = serializers.IntegerField()
        current_step = serializers.CharField(allow_null=True)

        def get_total_steps(self, obj) -> int:
            return TOTAL_STEPS

    id = serializers.UUIDField()
    slug = serializers.CharField()
    name = serializers.CharField()
    company_name = serializers.CharField()
    abbr = serializers.CharField()
    currency = serializers.CharField()
    country = serializers.CharField()
    admin_email = serializers.EmailField()
    admin_first_name = serializers.CharField()
    extra_cost_centers = serializers.ListField(child=serializers.CharField())
    extra_warehouses = serializers.ListField(child=serializers.CharField())
    engine = serializers.CharField(source="engine.name")
    allow_restricting_existing_admin = serializers.BooleanField()
    owner_email = serializers.SerializerMethodField()
    status = serializers.CharField(help_text="the tenant: new until provisioning completed once, then active")
    onboarding = OnboardingSummarySerializer()
    created_at = serializers.DateTimeField()

    def get_owner_email(self, obj) -> str | None:
        return obj.owner.email if obj.owner else None


class TenantListApi(APIView):
    permission_classes = [IsAuthenticated, IsOperatorForWrites]

    class FilterSerializer(QueryFilterSerializer):
        status = serializers.ChoiceField(choices=OnboardingStatus.choices, required=False)
        search = serializers.CharField(required=False, max_length=140, validators=[VISIBLE_TEXT])

    class InputSerializer(serializers.Serializer):
        # Types only: the rules of a tenant (slug, ISO 4217, abbreviation, uniqueness) live in tenant_create.
        slug = serializers.CharField(max_length=63)
        name = serializers.CharField(max_length=140, required=False, allow_blank=True, default="")
        company_name = serializers.CharField(max_length=140)
        abbr = serializers.CharField(max_length=10)
        currency = serializers.CharField(max_length=3)
        country = serializers.CharField(max_length=100)
        admin_email = serializers.CharField(max_length=254)
        admin_first_name = serializers.CharField(max_length=100, required=False, allow_blank=True, default="")
        extra_cost_centers = serializers.ListField(
            child=serializers.CharField(max_length=140), required=False, default=list, max_length=50
        )
        extra_warehouses = serializers.ListField(
            child=serializers.CharField(max_length=140), required=False, default=list, max_length=50
        )
        engine = serializers.CharField(
            max_length=64, required=False, allow_blank=True, default="", help_text="engine connection name"
        )
        owner_email = serializers.EmailField(
            required=False, allow_null=True, default=None, help_text="the user who may follow this tenant"
        )
        webhook_url = serializers.CharField(
            max_length=500,
            required=False,
            allow_blank=True,
            allow_null=True,
            default=None,
            help_text="called when the onboarding ends (https, a public address); empty: the global one",
        )
        start = serializers.BooleanField(default=True, help_text="start provisioning now (default true)")
        allow_restricting_existing_admin = serializers.BooleanField(
            default=False,
            help_text="let provisioning restrict an admin user that already existed in the engine and could see every "
            "company (default false: step 8 refuses and says why)",
        )

    @extend_schema(
        operation_id="tenants_list",
        summary="Tenants the caller may see (operators: all; owners: their own)",
        parameters=[FilterSerializer, *PAGE_PARAMETERS],
        responses={200: paginated(TenantOutputSerializer, name="TenantPage"), **error_responses(400, 401, 404)},
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        tenants = tenant_list(visible_to=request.user, **filters.validated_data)
        paginator = Pagination()
        page = paginator.paginate_queryset(tenants, request, view=self)
        return paginator.get_paginated_response(TenantOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="tenants_create",
        summary="Create a tenant (operators); its provisioning starts unless start is false",
        request=InputSerializer,
        responses={201: TenantOutputSerializer, **error_responses(400, 401, 403, 415)},
        examples=[
            OpenApiExample(
                "A tenant",
                request_only=True,
                value={
                    "slug": "initech",
                    "company_name": "Initech Inc",
                    "abbr": "INIT",
                    "currency": "USD",
                    "country": "United States",
                    "admin_email": "admin@initech.example",
                    "extra_cost_centers": ["Operations"],
                    "extra_warehouses": ["Returns"],
                    "start": True,
                },
            )
        ],
    )
    def post(self, request):
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = dict(serializer.validated_data)
        start = data.pop("start")
        owner_email = data.pop("owner_email")
        engine_name = data.pop("engine")
        # One transaction: the first run is enqueued (on commit) only once the tenant exists for the workers.
        with transaction.atomic():
            tenant = tenant_create(
                **data,
                engine=engine_get(name=engine_name or None),
                owner=user_get_by_email(email=owner_email) if owner_email else None,
            )
            if start:
                onboarding_start(onboarding=tenant.onboarding, requested_by=user_label(user=request.user))
        tenant = tenant_get_visible(identifier=str(tenant.id), visible_to=request.user)
        return Response(
            TenantOutputSerializer(tenant).data,
            status=status.HTTP_201_CREATED,
            headers={"Location": f"/api/tenants/{tenant.id}"},
        )


class TenantDetailApi(APIView):
    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="tenants_read",
        summary="One tenant, by id or slug",
        parameters=[TENANT_ID],
        responses={200: TenantOutputSerializer, **error_responses(401, 404)},
    )
    def get(self, request, tenant_id):
        tenant = tenant_get_visible(identifier=tenant_id, visible_to=request.user)
        return Response(TenantOutputSerializer(tenant).data)
