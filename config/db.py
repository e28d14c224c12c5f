"""Surviving a dropped database connection (issue 6, item 6).

When PostgreSQL drops its connections (a restart, a failover, an administrator terminating
backends), a process holding a persistent connection (CONN_MAX_AGE > 0) finds out at its next
query. Two things keep that from becoming a server error:

* CONN_HEALTH_CHECKS (config/settings.py): before the first query of each request, Django checks
  that a reused connection still answers, and opens a new one if not. That covers a connection
  that died while idle between requests, which is the common case.
* atomic_with_reconnect, below: a write transaction whose connection breaks while it runs is run
  once more on a new connection, where doing so cannot store anything twice.

Celery workers need neither: Celery's Django fix-up closes every connection before and after
each task, so a worker holds none between tasks whatever CONN_MAX_AGE says, and a task whose
connection dies fails alone (its lease is released on the reconnected connection; the sweeper
rings it again). Do not set CELERY_DB_REUSE_MAX: it keeps connections across tasks unchecked.
tests/e2e/test_worker_database_loss.py holds both to that.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from django.db import InterfaceError, OperationalError, transaction

logger = logging.getLogger(__name__)

T = TypeVar("T")


def atomic_with_reconnect(work: Callable[[], T], *, replay_safe: bool = False, using: str | None = None) -> T:
    """Run work() in a transaction; if the database connection is lost, run it once more on a new one.

    Why running it again is safe:

    * Lost before COMMIT was sent: PostgreSQL aborts the open transaction of a connection that
      goes away, so nothing of the first run is stored, and Django dropped the on_commit callbacks
      (doorbells) it registered. The second run starts from a clean slate.
    * Lost during COMMIT: the outcome is unknown; the first run may be stored. work() runs again
      only if `replay_safe`, i.e. a second run after a stored first one stores nothing more (the
      Events API skips batches whose source_request_id it already received). Otherwise the error
      is raised, as before: the client's own retry is then no worse than it was.

    Only one retry: a database that stays away is an outage, not a dropped connection. Inside an
    outer transaction nothing can be retried here (the outer transaction is lost with the
    connection), so work() simply runs in a savepoint.
    """
    connection = transaction.get_connection(using)
    if connection.in_atomic_block:
        with transaction.atomic(using=using):
            return work()
    for attempt in (1, 2):
        used = None  # the driver's connection the transaction ran on
        committing = False
        try:
            with transaction.atomic(using=using):
                used = connection.connection
                result = work()
                committing = True  # what fails from here on fails in COMMIT
            return result
        except (OperationalError, InterfaceError):
            # Lost means closed: the driver saw the socket die, or Django closed the connection
            # when its rollback failed (and may already have opened a new one). A deadlock or a
            # statement timeout leaves it open: that is not ours to retry. Failing before the
            # body ran (used is None), the transaction never started.
            lost = used is None or bool(getattr(used, "closed", False))  # sqlite3 has no `closed`
            if attempt == 2 or not lost or (committing and not replay_safe):
                raise
            logger.warning(
                "database connection lost %s; running the transaction again on a new connection",
                "during COMMIT" if committing else "before COMMIT",
            )
            if used is None or connection.connection is used:
                connection.close()
    raise AssertionError("unreachable")
