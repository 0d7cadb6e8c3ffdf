# Load the Celery app with Django so that @shared_task and on_commit enqueues use the configured app.
from celery_app import app as celery_app

__all__ = ("celery_app",)
