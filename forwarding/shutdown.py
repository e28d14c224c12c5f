"""A worker's warm shutdown reaches the delivery running in its pool: finish the batch in hand, leave.

Celery's warm shutdown (SIGTERM) waits for running tasks to return, and a delivery drains its whole
outbox before returning: 20,000 members' worth. The worker's main process sets this flag when it
starts shutting down (forwarding/tasks.py connects Celery's worker_shutting_down signal); a delivery
checks it between batches and leaves, ringing its connection for the next worker.

The flag is a multiprocessing.Event made when this module is imported, in the worker's main
process before it forks its pool, so the pool's processes share it.
"""

from __future__ import annotations

import multiprocessing

_requested = multiprocessing.Event()


def request_shutdown() -> None:
    _requested.set()


def shutdown_requested() -> bool:
    return _requested.is_set()
