"""Advisory locks between a recompute of an audience and real-time evaluation (PostgreSQL).

A recompute computes the new member set in one statement and applies the difference in later ones.
Without a lock, a profile that real-time evaluation enters (and commits) in between would be taken
out again by the recompute's "left = stored - computed" step: its membership lost until the profile
changes again. So a recompute holds its audience's lock exclusively, and real-time evaluation holds
the locks of the active audiences it evaluates shared, taken before it reads any membership: the two
never overlap, real-time evaluations never wait for one another. The Events API does not wait either:
it takes the shared locks it can get (try_lock_audiences_for_evaluation), evaluates those audiences, and
leaves the others for later (audiences/membership/deferred.py), so a recompute of one audience never
holds up the requests that change another. SQLite serialises writers anyway, so these are no-ops there.
"""

from __future__ import annotations

from collections.abc import Iterable

from django.db import connection

LOCK_NAMESPACE = 0x41524543  # "AREC": pg_advisory_xact_lock(namespace, audience id)


def _key(audience_id: int) -> int:
    return audience_id & 0x7FFFFFFF


def lock_audience_membership(audience_id: int) -> None:
    """Exclusive, until the end of the current transaction: no real-time evaluation of the audience runs
    meanwhile (each waits), and every one that ran before has committed or rolled back. Taken by a
    recompute, and by a reader that must see every change either in what it reads or after it commits
    (forwarding's connect, which backfills from the members, while evaluations read the connections)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [LOCK_NAMESPACE, _key(audience_id)])


def lock_audience_for_recompute(audience_id: int) -> None:
    """Exclusive, until the end of the current transaction."""
    lock_audience_membership(audience_id)


def lock_audiences_for_evaluation(audience_ids: Iterable[int]) -> None:
    """Shared, until the end of the current transaction; in id order, so no two callers deadlock."""
    keys = sorted({_key(a) for a in audience_ids})
    if connection.vendor != "postgresql" or not keys:
        return
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(pg_advisory_xact_lock_shared(%s, k)) FROM unnest(%s::int[]) AS t(k)",
            [LOCK_NAMESPACE, keys],
        )


def try_lock_audiences_for_evaluation(audience_ids: Iterable[int]) -> set[int]:
    """Shared, until the end of the current transaction, without waiting: takes the locks that are free
    (or held shared by other evaluations) and returns the audience ids whose lock is held exclusively
    (a recompute, a connect), which it did not take. One statement whatever the number of audiences."""
    ids = sorted(set(audience_ids))
    if connection.vendor != "postgresql" or not ids:
        return set()
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT k FROM unnest(%s::int[]) AS t(k) WHERE NOT pg_try_advisory_xact_lock_shared(%s, k)",
            [[_key(a) for a in ids], LOCK_NAMESPACE],
        )
        busy_keys = {row[0] for row in cursor.fetchall()}
    return {a for a in ids if _key(a) in busy_keys}


def held_exclusively(audience_ids: Iterable[int]) -> bool:
    """Whether a recompute or a connect holds one of these audiences' locks now. Takes no lock that
    outlives the statement (each free one is taken shared and given back at once), in or out of a
    transaction. False on SQLite."""
    keys = sorted({_key(a) for a in audience_ids})
    if connection.vendor != "postgresql" or not keys:
        return False
    with connection.cursor() as cursor:
        cursor.execute(
            # CASE fixes the order: give back only a lock just taken.
            "SELECT count(*) FROM unnest(%s::int[]) AS t(k) WHERE CASE "
            "WHEN pg_try_advisory_lock_shared(%s, k) THEN NOT pg_advisory_unlock_shared(%s, k) ELSE true END",
            [keys, LOCK_NAMESPACE, LOCK_NAMESPACE],
        )
        return cursor.fetchone()[0] > 0
