"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it.
Rung by name (forwarding/doorbell.py, config/queueing.py)."""

import logging
from dataclasses import asdict

from celery import shared_task

from config.logs import bind_log_context
from connections.models import Connection
from forwarding import delivery, doorbell, lifecycle, sweeper

logger = logging.getLogger(__name__)


def _bind_connection(connection_id: int) -> None:
    """Name the connection and its partner on every log line of this task (config/logs.py)."""
    partner = Connection.objects.filter(pk=connection_id).values_list("output__partner_key", flat=True).first()
    bind_log_context(connection_id=connection_id, partner=partner)


@shared_task(name=doorbell.DELIVER_TASK, acks_late=True)
def deliver_connection(connection_id: int) -> dict:
    _bind_connection(connection_id)
    return asdict(delivery.deliver_connection(connection_id=connection_id))


@shared_task(name=doorbell.END_TASK, acks_late=True)
def end_connection(connection_id: int) -> str:
    _bind_connection(connection_id)
    return lifecycle.connection_end(connection_id=connection_id)


@shared_task(name="forwarding.tasks.sweep_pending_work", acks_late=True)
def sweep_pending_work() -> dict:
    found = sweeper.sweep()
    # A sweep that found nothing is DEBUG: every 15 s, it would bury the lines that matter.
    logger.log(logging.INFO if any(found.values()) else logging.DEBUG, "sweep: %s", found)
    return found
