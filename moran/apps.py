from django.apps import AppConfig


class MoranConfig(AppConfig):
    name = "moran"

    def ready(self):
        from moran import checks  # noqa: F401  (registers the system checks)
