"""Celery is the doorbell: ringing tells a worker to look at a connection's outbox.

A ring that cannot reach the broker is logged and dropped; the sweeper rings again, because
the outbox rows in the database are the truth.
"""

from __future__ import annotations

import logging

from django.db import transaction

logger = logging.getLogger(__name__)


def ring(connection_id: int, *, countdown: float | None = None) -> None:
    from forwarding.tasks import deliver_connection

    send_safely(deliver_connection, connection_id, countdown=countdown)


def ring_after_commit(connection_id: int) -> None:
    """Ring after the current transaction commits (never for rolled-back work). A duplicate
    ring is harmless: the delivery lease turns a second worker into a no-op."""
    transaction.on_commit(lambda: ring(connection_id))


def ring_end(connection_id: int, *, countdown: float | None = None) -> None:
    from forwarding.tasks import end_connection

    send_safely(end_connection, connection_id, countdown=countdown)


def send_safely(task, *args, countdown: float | None = None) -> None:
    """apply_async that logs instead of failing when the broker is unreachable."""
    try:
        task.apply_async(args=list(args), countdown=countdown)
    except Exception:
        logger.warning("could not queue %s%s; the sweeper will", task.name, args, exc_info=True)
