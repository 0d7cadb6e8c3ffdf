"""Every URL under /api/. Paths are the operators' (no trailing slash), as their scripts know them."""

from django.urls import include, path, re_path, register_converter
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.api import LoginApi, LogoutApi
from moran.api.exception_handlers import api_not_found
from moran.api.schema import TENANT_ID_REGEX
from provisioning.api import (
    OnboardingCancelApi,
    OnboardingContinueApi,
    OnboardingLogsApi,
    OnboardingRetryApi,
    OnboardingStatusApi,
)
from provisioning.batch_api import BatchCreateApi, BatchDetailApi
from tenants.api import TenantDetailApi, TenantListApi


class TenantIdConverter:
    """A tenant's id (UUID) or slug. Anything else is not a tenant: the catch-all answers 404 without a query."""

    regex = TENANT_ID_REGEX

    def to_python(self, value):
        return value

    def to_url(self, value):
        return str(value)


register_converter(TenantIdConverter, "tenant")

provisioning = [
    path("<tenant:tenant_id>/status", OnboardingStatusApi.as_view(), name="status"),
    path("<tenant:tenant_id>/logs", OnboardingLogsApi.as_view(), name="logs"),
    path("<tenant:tenant_id>/continue", OnboardingContinueApi.as_view(), name="continue"),
    path("<tenant:tenant_id>/retry", OnboardingRetryApi.as_view(), name="retry"),
    path("<tenant:tenant_id>/cancel", OnboardingCancelApi.as_view(), name="cancel"),
]

urlpatterns = [
    path("auth/login", LoginApi.as_view(), name="login"),
    path("auth/logout", LogoutApi.as_view(), name="logout"),
    path("tenants", TenantListApi.as_view(), name="tenants"),
    # Before tenants/<tenant_id>: "batch" would otherwise be read as a tenant's slug.
    path("tenants/batch", BatchCreateApi.as_view(), name="tenant-batches"),
    path("tenants/batch/<uuid:batch_id>", BatchDetailApi.as_view(), name="tenant-batch"),
    path("tenants/<tenant:tenant_id>", TenantDetailApi.as_view(), name="tenant"),
    path("provisioning/tenants/", include((provisioning, "provisioning"))),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    # Whatever else is asked under /api/ gets a JSON 404, also with DEBUG on.
    re_path(r"^.*$", api_not_found),
]
