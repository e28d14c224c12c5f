"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it.
Rung by name (forwarding/doorbell.py, config/queueing.py)."""

import logging
from dataclasses import asdict

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_ready, worker_shutting_down
from django.db import connection

from config.logs import bind_log_context
from connections.models import Connection
from forwarding import (
    alerts,
    bulk,
    delivery,
    doorbell,
    erasure,
    history,
    leases,
    lifecycle,
    recovery,
    shutdown,
    sweeper,
    sync,
)
from outputs.partners.base import Capability
from outputs.partners.registry import partner_keys_with

logger = logging.getLogger(__name__)


def _bind_connection(connection_id: int) -> str | None:
    """Name the connection and its partner on every log line of this task (config/logs.py); returns the
    partner's key."""
    partner = Connection.objects.filter(pk=connection_id).values_list("output__partner_key", flat=True).first()
    bind_log_context(connection_id=connection_id, partner=partner)
    return partner


# bind=True: the task's id is recorded on each partner call it makes (DeliveryAttempt.task_id).
@shared_task(name=doorbell.DELIVER_TASK, acks_late=True, bind=True)
def deliver_connection(self, connection_id: int) -> dict:
    doorbell.ring_answered(connection_id)  # first: rings from now on queue a task again
    task_id = self.request.id or ""
    if _bind_connection(connection_id) in partner_keys_with(Capability.BULK):
        # Rung again for a bulk connection (a retry after a backoff, a resume, a worker's hand-over): an
        # upload, recorded as one.
        report = bulk.upload_connection(connection_id=connection_id, trigger=bulk.Trigger.RETRY, task_id=task_id)
    else:
        report = delivery.deliver_connection(connection_id=connection_id, task_id=task_id)
    return asdict(report)


@shared_task(name=doorbell.END_TASK, acks_late=True, bind=True)
def end_connection(self, connection_id: int) -> str:
    _bind_connection(connection_id)
    return lifecycle.connection_end(connection_id=connection_id, task_id=self.request.id or "")


@shared_task(name=doorbell.OLD_TARGET_CLEANUP_TASK, acks_late=True, bind=True)
def clean_up_old_target(self, job_id: int) -> str:
    return lifecycle.old_target_cleanup_run(job_id=job_id, task_id=self.request.id or "")


@shared_task(name=doorbell.RECONCILE_TASK, acks_late=True, bind=True)
def reconcile_connection(self, job_id: int) -> dict:
    return sync.reconcile_run(job_id=job_id, task_id=self.request.id or "")


@shared_task(name=doorbell.PROBE_TASK, acks_late=True)
def probe_connection(connection_id: int) -> str:
    _bind_connection(connection_id)
    return recovery.probe_faulted(connection_id)


@shared_task(name="forwarding.tasks.sweep_pending_work", acks_late=True)
def sweep_pending_work() -> dict:
    found = sweeper.sweep()
    # A sweep that found nothing is DEBUG: every few seconds, it would bury the lines that matter.
    logger.log(logging.INFO if any(found.values()) else logging.DEBUG, "sweep: %s", found)
    return found


@shared_task(name="forwarding.tasks.flush_bulk_uploads", acks_late=True)
def flush_bulk_uploads() -> dict:
    return bulk.flush_due_uploads()


@shared_task(name=bulk.UPLOAD_TASK, acks_late=True, bind=True)
def upload_connection(self, connection_id: int, trigger: str = bulk.Trigger.TIME) -> dict:
    _bind_connection(connection_id)
    return asdict(bulk.upload_connection(connection_id=connection_id, trigger=trigger, task_id=self.request.id or ""))


# A channel that fails is retried with backoff (5 s, 10 s, ... up to 10 min); beat sends again what is left.
@shared_task(
    name=alerts.SEND_TASK,
    acks_late=True,
    autoretry_for=(alerts.AlertNotSent,),
    retry_backoff=5,
    retry_backoff_max=600,
    max_retries=8,
)
def send_connection_alert(alert_id: int) -> str:
    return alerts.alert_send(alert_id=alert_id)


@shared_task(name="forwarding.tasks.send_unsent_alerts", acks_late=True)
def send_unsent_alerts() -> int:
    return alerts.alerts_resend()


@shared_task(name=erasure.FINISH_TASK, acks_late=True)
def finish_erasures() -> dict:
    return erasure.erasures_finish()


@shared_task(name="forwarding.tasks.snapshot_history")
def snapshot_history() -> dict:
    return history.snapshot_history(days=2)


@worker_shutting_down.connect
def _finish_the_batch_in_hand(**kwargs) -> None:
    """Warm shutdown: deliveries running in the pool leave after their batch (forwarding/shutdown.py)."""
    shutdown.request_shutdown()


@celeryd_after_setup.connect
def _name_the_leases(sender: str, **kwargs) -> None:
    """Leases taken in this worker (its pool forks after this) carry its node name."""
    leases.set_worker_name(sender)


@worker_ready.connect
def _free_a_dead_predecessors_leases(sender, **kwargs) -> None:
    """A worker restarted under the same name after a crash frees the leases its predecessor held,
    and the sweep rings their connections: they resume now, not when the leases expire."""
    try:
        if leases.release_leases_of_worker(sender.hostname):
            sweeper.sweep()
    finally:
        connection.close()  # the main process keeps no database connection
