"""Celery is the doorbell: ringing tells a worker to look at a connection's outbox.

A ring that cannot reach the broker is logged and dropped; the sweeper rings again, because
the outbox rows in the database are the truth. Tasks are rung by name (config/queueing.py):
forwarding/tasks.py, which runs them, sits above every module that rings.
"""

from __future__ import annotations

from django.db import transaction

from config import queueing

DELIVER_TASK = "forwarding.tasks.deliver_connection"
END_TASK = "forwarding.tasks.end_connection"
PROBE_TASK = "forwarding.tasks.probe_connection"
# A connection's life-cycle jobs (forwarding.models.ConnectionJob), by kind.
RECONCILE_TASK = "forwarding.tasks.reconcile_connection"
OLD_TARGET_CLEANUP_TASK = "forwarding.tasks.clean_up_old_target"
JOB_TASKS = {"reconcile": RECONCILE_TASK, "old_target_cleanup": OLD_TARGET_CLEANUP_TASK}


def ring(connection_id: int, *, countdown: float | None = None) -> None:
    queueing.send_safely(DELIVER_TASK, connection_id, countdown=countdown)


def ring_after_commit(connection_id: int) -> None:
    """Ring after the current transaction commits (never for rolled-back work). A duplicate
    ring is harmless: the delivery lease turns a second worker into a no-op."""
    transaction.on_commit(lambda: ring(connection_id))


def ring_end(connection_id: int, *, countdown: float | None = None) -> None:
    queueing.send_safely(END_TASK, connection_id, countdown=countdown)


def ring_end_after_commit(connection_id: int) -> None:
    transaction.on_commit(lambda: ring_end(connection_id))


def ring_probe(connection_id: int) -> None:
    queueing.send_safely(PROBE_TASK, connection_id)


def ring_job(kind: str, job_id: int, *, countdown: float | None = None) -> None:
    """Run a ConnectionJob (a reconcile, an old target's clean-up); the sweeper rings again a job left waiting."""
    queueing.send_safely(JOB_TASKS[kind], job_id, countdown=countdown)


def ring_job_after_commit(kind: str, job_id: int) -> None:
    transaction.on_commit(lambda: ring_job(kind, job_id))
