"""The Celery application, configured from Django settings (``CELERY_*``).

Run a worker with ``celery -A celery_app worker -Q provisioning``; Flower with ``celery -A celery_app flower``.
"""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "moran.settings")

app = Celery("moran")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks(["provisioning"])
