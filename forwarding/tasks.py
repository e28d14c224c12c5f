"""Thin tasks: each takes ids and calls one service. They may run twice; the services allow it.
Rung by name (forwarding/doorbell.py, config/queueing.py)."""

from dataclasses import asdict

from celery import shared_task
from celery.signals import celeryd_after_setup, worker_ready, worker_shutting_down
from django.db import connection

from forwarding import delivery, doorbell, leases, lifecycle, recovery, shutdown, sweeper


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
