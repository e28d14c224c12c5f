"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it."""

from dataclasses import asdict

from celery import shared_task

from forwarding import delivery, sweeper
from forwarding import lifecycle as connection_services


@shared_task(name="forwarding.tasks.deliver_connection", acks_late=True)
def deliver_connection(connection_id: int) -> dict:
    return asdict(delivery.deliver_connection(connection_id=connection_id))


@shared_task(name="forwarding.tasks.end_connection", acks_late=True)
def end_connection(connection_id: int) -> str:
    return connection_services.connection_end(connection_id=connection_id)


@shared_task(name="forwarding.tasks.sweep_pending_work", acks_late=True)
def sweep_pending_work() -> dict:
    return sweeper.sweep()
