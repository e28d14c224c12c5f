"""The Celery app. The database is the durable record; Celery is only the doorbell."""

import os
from typing import Any

from celery import Celery
from celery.app.amqp import AMQP
from celery.signals import task_postrun, task_prerun
from django.db import close_old_connections
from kombu import Connection

from config import logs  # noqa: F401  (connects the task signals that give log lines their task id)
from config.health import WorkerHeartbeat

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


class BrokerConnection(Connection):
    """kombu's Connection, except that collect() also forgets the default channel.

    Why: Celery 5.7.0's consumer, on losing the broker, calls ``connection.collect()`` and then
    ``connection.close()`` (celery/celery#10242, for GH-9705). With Redis, collect() closes the
    default channel while the worker is waiting in BRPOP: reading that BRPOP's reply fails (the
    broker is gone), so the channel is left half-closed, and collect() then detaches the transport
    (``transport.client = None``). close() closes the same channel again; when a task is running
    (acks_late: its message is unacknowledged) the channel restores it through the detached
    transport and fails with ``AttributeError: 'NoneType' object has no attribute 'hostname'``.
    That error is not a connection error, so it escapes Celery's error handling and the worker
    exits ("Unrecoverable error"): issue 6, defect 3. A collected connection has no channel left
    to close; kombu itself drops the default channel the same way when it reconnects
    (Connection._connection_factory and revive). The unacknowledged message stays in Redis's
    unacked set and comes back after the visibility timeout; the sweeper rings sooner anyway.
    """

    def collect(self, socket_timeout=None):
        super().collect(socket_timeout)
        self._default_channel = None


class BrokerAMQP(AMQP):
    Connection = BrokerConnection


@task_prerun.connect
@task_postrun.connect
def _check_database_connections(task: Any = None, **_: Any) -> None:
    """A worker's connections outlive its tasks (CELERY_DB_REUSE_MAX, config/settings.py) but are checked as
    a request's are: before and after each task, one that failed, is past CONN_MAX_AGE or sits in a
    transaction left open is closed, and the next query on one kept first checks that it still answers
    (CONN_HEALTH_CHECKS), replacing it if the database dropped it meanwhile (config/db.py). Not for a task
    run eagerly, inside its caller's transaction (as the fix-up leaves those alone)."""
    if not getattr(getattr(task, "request", None), "is_eager", False):
        close_old_connections()


app = Celery("audience_forwarding", amqp=BrokerAMQP)
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Every worker leaves a heartbeat that /readyz reads (config/health.py).
app.steps["worker"].add(WorkerHeartbeat)
