"""Every URL under /api/. Paths are the operators' (no trailing slash), as their scripts know them."""

from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.api import LoginApi, LogoutApi
from moran.api.exception_handlers import api_not_found
from provisioning.api import (
    OnboardingCancelApi,
    OnboardingContinueApi,
    OnboardingLogsApi,
    OnboardingRetryApi,
    OnboardingStatusApi,
)
from tenants.api import TenantDetailApi, TenantListApi

provisioning = [
    path("<str:tenant_id>/status", OnboardingStatusApi.as_view(), name="status"),
    path("<str:tenant_id>/logs", OnboardingLogsApi.as_view(), name="logs"),
    path("<str:tenant_id>/continue", OnboardingContinueApi.as_view(), name="continue"),
    path("<str:tenant_id>/retry", OnboardingRetryApi.as_view(), name="retry"),
    path("<str:tenant_id>/cancel", OnboardingCancelApi.as_view(), name="cancel"),
]

urlpatterns = [
    path("auth/login", LoginApi.as_view(), name="login"),
    path("auth/logout", LogoutApi.as_view(), name="logout"),
    path("tenants", TenantListApi.as_view(), name="tenants"),
    path("tenants/<str:tenant_id>", TenantDetailApi.as_view(), name="tenant"),
    path("provisioning/tenants/", include((provisioning, "provisioning"))),
    path("schema/", SpectacularAPIView.as_view(), name="schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api:schema"), name="docs"),
    # Whatever else is asked under /api/ gets a JSON 404, also with DEBUG on.
    re_path(r"^.*$", api_not_found),
]
