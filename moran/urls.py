from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
]

# --- The operators' API (issue 4) ---------------------------------------------------------------------------------
urlpatterns += [path("api/", include(("moran.api.urls", "api")))]
# JSON instead of Django's HTML pages for /api/ paths (the catch-all in moran.api.urls covers unknown URLs too).
handler404 = "moran.api.exception_handlers.handler404"
handler500 = "moran.api.exception_handlers.handler500"
