from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
]

# --- Operations: probes and Prometheus metrics ---------------------------------------------------------
from moran import health, metrics  # noqa: E402

urlpatterns += [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics, name="metrics"),
]

# --- The operators' API ---------------------------------------------------------------------------------
from moran.api.exception_handlers import api_not_found  # noqa: E402

# "/api" itself too: a JSON 404, not CommonMiddleware's HTML redirect to "/api/" (whatever the method).
urlpatterns += [path("api/", include(("moran.api.urls", "api"))), path("api", api_not_found)]
# JSON instead of Django's HTML pages for /api/ paths (the catch-all in moran.api.urls covers unknown URLs too).
handler404 = "moran.api.exception_handlers.handler404"
handler500 = "moran.api.exception_handlers.handler500"
