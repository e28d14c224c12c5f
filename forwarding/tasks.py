"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it.
Rung by name (forwarding/doorbell.py, config/queueing.py)."""

from dataclasses import asdict

from celery import shared_task

from forwarding import delivery, doorbell, history, lifecycle, sweeper


@shared_task(name=doorbell.DELIVER_TASK, acks_late=True)
def deliver_connection(connection_id: int) -> dict:
    return asdict(delivery.deliver_connection(connection_id=connection_id))


@shared_task(name=doorbell.END_TASK, acks_late=True)
def end_connection(connection_id: int) -> str:
    return lifecycle.connection_end(connection_id=connection_id)


@shared_task(name="forwarding.tasks.sweep_pending_work", acks_late=True)
def sweep_pending_work() -> dict:
    return sweeper.sweep()


@shared_task(name="forwarding.tasks.snapshot_history")
def snapshot_history() -> dict:
    return history.snapshot_history(days=2)
