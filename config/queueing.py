"""Queueing Celery tasks without letting a broker outage fail the caller.

Tasks are queued by their registered name, so the code that queues work (a service, the doorbell) does
not import the task modules, which sit above it and import the services. Each app imports its task
module in its AppConfig.ready(), so the names are registered in every process (web, worker, beat).
"""

from __future__ import annotations

import logging

from config.celery import app

logger = logging.getLogger(__name__)


def send_safely(task_name: str, *args: object, countdown: float | None = None) -> bool:
    """Queue the task registered as `task_name`; log instead of failing when the broker is unreachable
    (the database holds the work, and a periodic sweep queues it again). An unknown name raises: that is
    a bug, not an outage. Returns whether it was queued."""
    task = app.tasks[task_name]
    try:
        task.apply_async(args=list(args), countdown=countdown)
    except Exception:
        logger.warning("could not queue %s%s; the sweeper will", task_name, args, exc_info=True)
        return False
    return True
