"""The Celery app. The database is the durable record; Celery is only the doorbell."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("audience_forwarding")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
