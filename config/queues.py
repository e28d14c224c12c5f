"""Celery queues: one per kind of work, so a large recompute or bulk upload never delays a real-time change.

Queue names are the deployment's queue prefix (the CELERY_QUEUE setting, Celery's task_default_queue) and
the kind: ``forwarding.realtime``, ``forwarding.recompute``, ... The router reads the prefix from the app's
configuration when it routes, so a process that changes ``task_default_queue`` (the tests' private queues)
routes to its own queues too. A worker started without ``-Q`` consumes every queue (CELERY_TASK_QUEUES);
``-Q`` with some of ``queue_names()`` runs a worker per kind of work (README, "Operating").

Imports nothing of the apps: tasks are named by their registered names.
"""

from __future__ import annotations

from typing import Any

from celery import current_app
from kombu import Exchange, Queue

# The kinds of work, each a queue of its own.
INGESTION = "ingestion"  # work on the way in (profiles, events, identities)
REALTIME = "realtime"  # delivering a connection's pending changes: a member's change within seconds
BULK = "bulk"  # whole-list partner work: bulk uploads, a deleted connection's clean-up
RECOMPUTE = "recompute"  # set-wise recomputes of audiences: may take minutes
MAINTENANCE = "maintenance"  # the sweeper, heartbeats, purges

KINDS = (INGESTION, REALTIME, BULK, RECOMPUTE, MAINTENANCE)

# Task name -> kind. A task not listed goes by its app (below), else to the prefix queue itself.
TASK_KINDS: dict[str, str] = {
    "forwarding.tasks.deliver_connection": REALTIME,
    "forwarding.tasks.end_connection": BULK,
    "forwarding.tasks.sweep_pending_work": MAINTENANCE,
    "forwarding.tasks.upload_connection": BULK,
    # Whole-list work of a connection's life cycle: an edited target's clean-up, a reconcile.
    "forwarding.tasks.clean_up_old_target": BULK,
    "forwarding.tasks.reconcile_connection": BULK,
    # A probe is one small call: it resumes a connection faulted by an outage, so it goes with real time.
    "forwarding.tasks.probe_connection": REALTIME,
    "forwarding.tasks.send_connection_alert": MAINTENANCE,
    "forwarding.tasks.send_unsent_alerts": MAINTENANCE,
    "forwarding.tasks.finish_erasures": MAINTENANCE,
    "forwarding.tasks.snapshot_history": MAINTENANCE,
    "audiences.tasks.recompute_audience": RECOMPUTE,
    "audiences.tasks.recompute_time_based_audiences": RECOMPUTE,
    "audiences.tasks.purge_expired_events": MAINTENANCE,
    "config.health.heartbeat": MAINTENANCE,
}
# Tasks added later without a row above: bulk flushes by their name, the rest by their app.
NAME_FRAGMENT_KINDS = {"bulk": BULK, "recompute": RECOMPUTE}
APP_KINDS = {"audiences": INGESTION, "forwarding": REALTIME}


def queue_name(prefix: str, kind: str) -> str:
    return f"{prefix}.{kind}"


def queue_names(prefix: str) -> list[str]:
    """Every queue a worker must consume to run all the work: the kinds', and the prefix itself
    (where a task queued with an explicit default lands)."""
    return [prefix, *(queue_name(prefix, kind) for kind in KINDS)]


def declared_queues(prefix: str) -> list[Queue]:
    """CELERY_TASK_QUEUES: each queue with an exchange and routing key of its own name, as Celery makes a
    queue it was not told of. (A bare Queue(name) would bind every queue to the default exchange and
    routing key: each task would then land in all of them.)"""
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in queue_names(prefix)]


def task_kind(task_name: str) -> str | None:
    if task_name in TASK_KINDS:
        return TASK_KINDS[task_name]
    for fragment, kind in NAME_FRAGMENT_KINDS.items():
        if fragment in task_name.rsplit(".", 1)[-1]:
            return kind
    return APP_KINDS.get(task_name.split(".", 1)[0])


def route_task(name: str, args: Any, kwargs: Any, options: dict, task: Any = None, **_: Any) -> dict | None:
    """Celery router (CELERY_TASK_ROUTES): the queue of the task's kind under the current prefix."""
    kind = task_kind(name)
    if kind is None:
        return None
    app = task.app if task is not None else current_app
    return {"queue": queue_name(app.conf.task_default_queue, kind)}
