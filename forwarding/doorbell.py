"""Celery is the doorbell: ringing tells a worker to look at a connection's outbox.

A ring that cannot reach the broker is logged and dropped; the sweeper rings again, because
the outbox rows in the database are the truth. Tasks are rung by name (config/queueing.py):
forwarding/tasks.py, which runs them, sits above every module that rings.
"""

from __future__ import annotations

import redis
from django.conf import settings
from django.db import transaction

from config import queueing

DELIVER_TASK = "forwarding.tasks.deliver_connection"
END_TASK = "forwarding.tasks.end_connection"
PROBE_TASK = "forwarding.tasks.probe_connection"
# A connection's life-cycle jobs (forwarding.models.ConnectionJob), by kind.
RECONCILE_TASK = "forwarding.tasks.reconcile_connection"
OLD_TARGET_CLEANUP_TASK = "forwarding.tasks.clean_up_old_target"
JOB_TASKS = {"reconcile": RECONCILE_TASK, "old_target_cleanup": OLD_TARGET_CLEANUP_TASK}


# A coalesced ring's mark lives this long at most: a task queued longer (or lost) only costs a ring not
# saved, and the sweeper rings connections with due work every few seconds whatever the marks say.
RING_MARK_SECONDS = 10
_clients: dict[str, redis.Redis] = {}


def ring(connection_id: int, *, countdown: float | None = None) -> bool:
    return queueing.send_safely(DELIVER_TASK, connection_id, countdown=countdown)


def ring_after_commit(connection_id: int) -> None:
    """Ring after the current transaction commits (never for rolled-back work), unless a ring of the
    connection is already queued and its task has not started yet (ring_coalesced). A duplicate ring is
    harmless: the delivery lease turns a second worker into a no-op."""
    transaction.on_commit(lambda: ring_coalesced(connection_id))


def ring_coalesced(connection_id: int) -> None:
    """Ring, unless a ring of this connection is queued and its task has not begun: that task looks at the
    outbox after this commit (its first act is ring_answered, before its lease and claims), so it sees what
    this ring is for. The mark is a Redis key on the broker's Redis, set with the ring and deleted by the
    task as it starts; without it (the setting off, another broker, Redis unreachable) every ring goes out."""
    client = _marks()
    if client is not None:
        try:
            if not client.set(_mark(connection_id), 1, nx=True, ex=RING_MARK_SECONDS):
                return  # a queued task will look after this commit
        except redis.RedisError:
            client = None
    if ring(connection_id) is False and client is not None:
        _unmark(client, connection_id)  # nothing was queued: the next ring must go out


def ring_answered(connection_id: int) -> None:
    """The delivery task's first act, before it takes the lease or claims: rings from now on queue a task
    again (a change committed after this task's last claim must not be left to it)."""
    client = _marks()
    if client is not None:
        _unmark(client, connection_id)


def _marks() -> redis.Redis | None:
    url = settings.CELERY_BROKER_URL
    if not settings.FORWARDING.get("COALESCE_RINGS") or not url.startswith(("redis://", "rediss://")):
        return None
    client = _clients.get(url)
    if client is None:
        client = _clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    return client


def _mark(connection_id: int) -> str:
    return f"{settings.CELERY_TASK_DEFAULT_QUEUE}:ring-queued:{connection_id}"


def _unmark(client: redis.Redis, connection_id: int) -> None:
    try:
        client.delete(_mark(connection_id))
    except redis.RedisError:
        pass  # the mark expires within RING_MARK_SECONDS; the sweeper rings meanwhile


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
