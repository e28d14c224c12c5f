"""Dropping database connections for real, for the tests of what survives it (issue 6, item 6).

Only backends of the test database are touched (datname = current_database()), from a
connection of our own outside Django: never another helper's or project's database.
"""

from __future__ import annotations

import psycopg
from django.db import connection


def admin_connection() -> psycopg.Connection:
    """A connection of our own to the test database, outside Django, to terminate the others."""
    db = connection.settings_dict
    return psycopg.connect(
        dbname=db["NAME"],
        user=db["USER"] or "postgres",
        password=db["PASSWORD"] or None,
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        autocommit=True,
    )


def other_backends() -> list[int]:
    """The pids of the test database's backends, except the one asking."""
    sql = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    with admin_connection() as admin:
        return [row[0] for row in admin.execute(sql)]


def terminate_backends(pids: list[int] | None = None) -> set[int]:
    """Terminate the test database's backends (all but the one asking, or the given ones) and
    wait until they are gone; return the pids terminated."""
    pids = other_backends() if pids is None else pids
    with admin_connection() as admin:
        # With a timeout, pg_terminate_backend waits until the backend has really exited.
        return {pid for pid in pids if admin.execute("SELECT pg_terminate_backend(%s, 5000)", [pid]).fetchone()[0]}
