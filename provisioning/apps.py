from django.apps import AppConfig


class ProvisioningConfig(AppConfig):
    name = "provisioning"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        # Runs are sent by task name; the embedded (eager) mode runs them in this process, which must therefore know
        # the step tasks (a worker imports them by itself).
        from provisioning import tasks  # noqa: F401
