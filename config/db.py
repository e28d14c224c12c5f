"""Surviving a dropped database connection (issue 6, item 6).

When PostgreSQL drops its connections (a restart, a failover, an administrator terminating
backends), a process holding a persistent connection (CONN_MAX_AGE > 0) finds out at its next
query. Two things keep that from becoming a server error:

* CONN_HEALTH_CHECKS (config/settings.py): before the first query of each request, Django checks
  that a reused connection still answers, and opens a new one if not. That covers a connection
  that died while idle between requests, which is the common case.
* atomic_with_reconnect, below: a write transaction whose connection breaks while it runs is run
  once more on a new connection, where doing so cannot store anything twice.

Celery workers keep their connection from one task to the next (CELERY_DB_REUSE_MAX; a new PostgreSQL
backend per task cost about 8 ms of CPU per ring) and check it as a request does: before and after each
task, config/celery.py calls close_old_connections, so a connection that died between tasks is replaced at
the next task's first query, and a task whose connection dies mid-task fails alone (its lease is released on
the reconnected connection; the sweeper rings it again).
tests/e2e/test_worker_database_loss.py holds both to that.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Collection, Sequence
from datetime import datetime
from typing import Any, TypeVar

from django.db import InterfaceError, OperationalError, connection, transaction

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


def _max_query_params() -> int:
    # SQLite's real limit (32,766 since 3.32), not Django's conservative 999: a request's rows in one statement.
    if connection.vendor == "sqlite":
        connection.ensure_connection()
        return connection.connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    return connection.features.max_query_params or 65535  # PostgreSQL: 65,535


def insert_rows(
    table: str,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
    *,
    json_columns: Collection[str] = (),
    suffix: str = "",
    returning: str = "",
    orm_datetimes: bool = True,
) -> list[tuple]:
    """INSERT INTO table (columns) VALUES (...), (...) [suffix] [RETURNING returning]: many rows in one
    statement (chunked under the bound-parameter limit: SQLite's is 999), and no model instances, for the hot
    path, where bulk_create spends more in Python than the database spends on the rows. Datetimes are adapted
    as the ORM does (on SQLite, naive UTC text; `orm_datetimes=False`: as the driver does, with the offset, for
    tables whose raw readers expect that), `json_columns` encoded once. Returns the RETURNING rows in
    the order of `rows` (what PostgreSQL and SQLite do for a plain INSERT ... VALUES, as bulk_create relies on).
    `table`, `columns`, `suffix` and `returning` are SQL text from the caller, never user input."""
    if not rows:
        return []
    json_at = {columns.index(c) for c in json_columns}
    cast = "::jsonb" if connection.vendor == "postgresql" else ""
    placeholder = "(" + ", ".join(f"%s{cast}" if i in json_at else "%s" for i in range(len(columns))) + ")"
    per_statement = max(1, _max_query_params() // len(columns))
    head = f"INSERT INTO {connection.ops.quote_name(table)} ({', '.join(columns)}) VALUES "  # noqa: S608 (names from the caller)
    tail = (f" {suffix}" if suffix else "") + (f" RETURNING {returning}" if returning else "")
    adapt = connection.ops.adapt_datetimefield_value if orm_datetimes else None
    returned: list[tuple] = []
    with connection.cursor() as cursor:
        for start in range(0, len(rows), per_statement):
            chunk = rows[start : start + per_statement]
            params: list[Any] = []
            for row in chunk:
                for i, value in enumerate(row):
                    if i in json_at:
                        value = json.dumps(value)
                    elif adapt is not None and isinstance(value, datetime):
                        value = adapt(value)
                    params.append(value)
            cursor.execute(head + ", ".join([placeholder] * len(chunk)) + tail, params)
            if returning:
                returned.extend(cursor.fetchall())
    return returned
