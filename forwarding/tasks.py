"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it.
Rung by name (forwarding/doorbell.py, config/queueing.py)."""

from dataclasses import asdict

from celery import shared_task
from celery.signals import worker_shutting_down

from forwarding import delivery, doorbell, lifecycle, recovery, shutdown, sweeper


@shared_task(name=doorbell.DELIVER_TASK, acks_late=True)
def deliver_connection(connection_id: int) -> dict:
    return asdict(delivery.deliver_connection(connection_id=connection_id))


@shared_task(name=doorbell.END_TASK, acks_late=True)
def end_connection(connection_id: int) -> str:
    return lifecycle.connection_end(connection_id=connection_id)


@shared_task(name=doorbell.PROBE_TASK, acks_late=True)
def probe_connection(connection_id: int) -> str:
    return recovery.probe_faulted(connection_id)


@shared_task(name="forwarding.tasks.sweep_pending_work", acks_late=True)
def sweep_pending_work() -> dict:
    return sweeper.sweep()


@worker_shutting_down.connect
def _finish_the_batch_in_hand(**kwargs) -> None:
    """Warm shutdown: deliveries running in the pool leave after their batch (forwarding/shutdown.py)."""
    shutdown.request_shutdown()
