"""The database side of one delivery batch, set-wise: claim it, write its adds ahead, record its outcome.

forwarding/delivery.py decides; this module reads and writes. On PostgreSQL each step is one statement, so
one round trip: the claim reads the batch with each add's profile attributes and each identity's state at
the partner, and commits its adds as "maybe held" in the same statement (a data-modifying CTE: the state it
returns is the one from before that write); the record upserts every outcome, deletes the settled changes
that no newer word replaced (the version guard), backs off the retried ones, stamps the connection and adds
the attempt, all in one statement, hence one transaction. Per-row ORM work (model instances, a statement
per retried row, a locking read before the delete) cost six times the partner call itself.

SQLite (the quick look, `make test` without DATABASE_URL) runs the same decisions through portable
statements, executemany'd in one transaction.

The version guard needs no lock: a DELETE whose WHERE names the version sent re-reads a row another
transaction is changing once that one commits (PostgreSQL's READ COMMITTED re-check), so a newer word
written meanwhile is never deleted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db import connection as db
from django.db import transaction
from django.utils.dateparse import parse_datetime

from audiences.models import Profile
from config import fast_json
from connections.models import Connection, ConnectionMember
from connections.selectors import MAY_BE_HELD
from forwarding.models import DeliveryAttempt, PendingChange

PENDING = PendingChange._meta.db_table
MEMBER = ConnectionMember._meta.db_table
PROFILE = Profile._meta.db_table
CONNECTION = Connection._meta.db_table
ATTEMPT = DeliveryAttempt._meta.db_table

ADDED, MAYBE_HELD = ConnectionMember.State.ADDED.value, ConnectionMember.State.MAYBE_HELD.value
# States a claim's write-ahead turns into "maybe held" and release_unsent() restores (the partner holds none).
RESTORABLE = (ConnectionMember.State.REMOVED.value, ConnectionMember.State.REJECTED.value)

# The connection's next due changes after the last id claimed, in id order: the batch both claims select.
DUE_BATCH = f"""
SELECT p.id, p.identity_type, p.value, p.action, p.profile_id, p.version, p.attempts, p.created_at
FROM {PENDING} p
WHERE p.connection_id = %(connection)s AND p.id > %(after)s AND p.next_attempt_at <= %(now)s
ORDER BY p.id
LIMIT %(size)s
"""

# The next due changes after a claimed id, in id order, with each add's attributes and the state of each
# identity at the partner (NULL: never sent). The batch is picked first and the two lookups run per row
# through unique indexes (scalar subqueries whose conditions are exactly those indexes' columns): with stale
# statistics a join was planned as a nested loop over every member of the connection (42 s a batch at
# 50,000). Statistics still matter to pick the unique index among those leading with the connection: see
# refresh_statistics(). The index (connection, id) serves the keyset: a scan starts after the batch
# just sent, not over the dead rows of every batch sent before it.
CLAIM_SQL = f"""
SELECT c.id, c.identity_type, c.value, c.action, c.profile_id, c.version, c.attempts, c.created_at,
       CASE WHEN c.action = 'add' THEN (SELECT pr.attributes FROM {PROFILE} pr WHERE pr.id = c.profile_id) END
           AS attributes,
       (SELECT m.state FROM {MEMBER} m
        WHERE m.connection_id = %(connection)s AND m.identity_type = c.identity_type AND m.value = c.value) AS state,
       (SELECT m.fingerprint FROM {MEMBER} m
        WHERE m.connection_id = %(connection)s AND m.identity_type = c.identity_type AND m.value = c.value)
           AS fingerprint
FROM ({DUE_BATCH}) c
ORDER BY c.id
"""

# The outbox fills by the million in one statement (a connect's backfill, a recompute) and empties batch by
# batch, so its statistics are usually wrong: planned from "13 rows" while 50,000 were due, the claim
# bitmap-scanned every due row and sorted them for each batch (42 ms a batch at 50,000, growing with the
# backlog). For the claim's transaction only, the planner is left with the ordered index scan, which reads
# one batch whatever the backlog. JIT is off with them: the penalty the planner puts on the sort it can
# no longer avoid (ordering the 500 rows read back from the CTE) is over jit_above_cost, and compiling the
# statement took 250 ms a batch.
ORDERED_SCAN_ONLY_SQL = (
    "SELECT set_config('enable_bitmapscan', 'off', true), set_config('enable_sort', 'off', true), "
    "set_config('jit', 'off', true)"
)

# A member the partner holds already stays "added": an update's unknown outcome leaves it held either way,
# but what it holds is unknown until the answer is recorded (fingerprint blank).
WRITE_AHEAD_CONFLICT = f"""
ON CONFLICT (connection_id, identity_type, value) DO UPDATE
SET state = CASE WHEN {MEMBER}.state = '{ADDED}' THEN {MEMBER}.state ELSE excluded.state END,
    fingerprint = '', updated_at = excluded.updated_at
"""

# PostgreSQL: the claim and the write-ahead of its adds in one statement (the claim reads the states from
# before the write), but for the adds of members acknowledged with a fingerprint. The member's state and
# fingerprint come from one probe of the unique index (a lateral join, where the portable claim above
# needs two scalar subqueries). The batch comes back as one JSON document, parsed by one fast_json.loads: per
# row and per column, psycopg's loaders (a datetime, a jsonb decoded on its own) cost more Python time than
# the rest of the batch's bookkeeping.
CLAIM_AND_WRITE_AHEAD_SQL = f"""
WITH claimed AS MATERIALIZED (
    SELECT c.id, c.identity_type, c.value, c.action, c.profile_id, c.version, c.attempts, c.created_at,
           CASE WHEN c.action = 'add' THEN (SELECT pr.attributes FROM {PROFILE} pr WHERE pr.id = c.profile_id) END
               AS attributes,
           m.state, m.fingerprint
    FROM (
        {DUE_BATCH}
    ) c
    LEFT JOIN LATERAL (
        SELECT m.state, m.fingerprint FROM {MEMBER} m
        WHERE m.connection_id = %(connection)s AND m.identity_type = c.identity_type AND m.value = c.value
    ) m ON true
),
ahead AS (
    INSERT INTO {MEMBER} (connection_id, identity_type, value, state, reason, fingerprint, updated_at)
    SELECT %(connection)s, c.identity_type, c.value, '{MAYBE_HELD}', '', '', %(now)s FROM claimed c
    -- An add the partner acknowledged with a fingerprint may be skipped (the same content): written ahead by
    -- write_ahead_adds() once delivery knows it is sent.
    WHERE c.action = 'add' AND NOT (c.state IS NOT DISTINCT FROM '{ADDED}' AND c.fingerprint <> '')
    {WRITE_AHEAD_CONFLICT}
)
SELECT coalesce(json_agg(json_build_array(
           id, identity_type, value, action, profile_id, version, attempts, extract(epoch FROM created_at),
           attributes, state, fingerprint) ORDER BY id), '[]')::text
FROM claimed
"""

WRITE_AHEAD_SQL = f"""
INSERT INTO {MEMBER} (connection_id, identity_type, value, state, reason, fingerprint, updated_at)
VALUES (%s, %s, %s, '{MAYBE_HELD}', '', '', %s)
{WRITE_AHEAD_CONFLICT}
"""

MEMBER_UPSERT_CONFLICT = """
ON CONFLICT (connection_id, identity_type, value) DO UPDATE
SET state = excluded.state, reason = excluded.reason, fingerprint = excluded.fingerprint,
    updated_at = excluded.updated_at
"""

ATTEMPT_COLUMNS = (
    "connection_id, kind, at, duration_ms, sent, delivered, rejected, retried, result, error, http_status, "
    "error_code, task_id"
)

# PostgreSQL: a batch's whole record in one statement (each part touches its own rows). The rows come as
# three JSON arrays of arrays (members, settled, retried): one fast_json.dumps in C, where psycopg's array
# dumpers built eight typed arrays element by element in Python.
RECORD_SQL = f"""
WITH members AS (
    INSERT INTO {MEMBER} (connection_id, identity_type, value, state, reason, fingerprint, updated_at)
    SELECT %(connection)s, r->>0, r->>1, r->>2, r->>3, r->>4, %(now)s
    FROM json_array_elements(%(members)s::json) AS r
    {MEMBER_UPSERT_CONFLICT}
),
settled AS (
    DELETE FROM {PENDING} p
    USING json_array_elements(%(settled)s::json) AS d
    WHERE p.id = (d->>0)::bigint AND p.version = (d->>1)::int
),
retried AS (
    UPDATE {PENDING} p
    SET attempts = p.attempts + 1, next_attempt_at = %(now)s + (r->>1)::float8 * interval '1 second',
        last_error = r->>2
    FROM json_array_elements(%(retried)s::json) AS r
    WHERE p.id = (r->>0)::bigint
),
attempt AS (
    INSERT INTO {ATTEMPT} ({ATTEMPT_COLUMNS})
    SELECT %(connection)s, 'batch', %(now)s, %(duration_ms)s, %(sent)s, %(delivered)s, %(rejected)s, %(retried_count)s,
           %(result)s, '', %(http_status)s, '', %(task_id)s
    WHERE %(sent)s > 0
)
UPDATE {CONNECTION} SET last_delivered_at = %(now)s WHERE id = %(connection)s
"""


@dataclass(slots=True)
class Claimed:
    """One claimed pending change, with what delivery needs to send and record it."""

    id: int
    identity_type: str
    value: str
    action: str
    profile_id: int | None
    version: int
    attempts: int
    created_at: datetime
    attributes: dict  # the profile's attributes for an add ({} for a remove)
    held: str | None  # the member's state when the partner holds or may hold it, else None
    acknowledged: str  # the fingerprint of the add the partner acknowledged and holds ("" if none)
    prior_state: str | None = None  # the member's state before the claim (None: no record)

    @property
    def key(self) -> tuple[str, str]:
        return (self.identity_type, self.value)


def _postgres() -> bool:
    return db.vendor == "postgresql"


# A table's statistics are refreshed once it changed by more than this many rows plus a sixteenth of its size
# since they were taken (autovacuum's own check waits up to a minute, and asks for 10%). Small, because what
# matters is one connection's share of the table: a new connection's members are unknown to statistics
# taken before it, whatever the table's size.
STALE_ROWS = 2000

STALE_TABLES_SQL = f"""
SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.relname IN ('{PENDING}', '{MEMBER}')
  AND greatest(s.n_mod_since_analyze, CASE WHEN s.relname = '{MEMBER}' THEN %(written)s ELSE 0 END)
      > {STALE_ROWS} + greatest(c.reltuples, 0) / 16
"""


# Batches between two looks at whether the outbox's and the members' statistics are stale, once a drain is
# long (before, at batches 0, 1, 2, 4, 8, ...: staleness is relative to a table's size, which grows fast).
STATISTICS_EVERY = 64


def statistics_due(batches_sent: int) -> bool:
    return batches_sent % STATISTICS_EVERY == 0 or (batches_sent & (batches_sent - 1)) == 0


def refresh_statistics(written: int = 0) -> list[str]:
    """ANALYZE the outbox and the members table when they changed much since their statistics were taken.
    A connect fills the outbox by the million and delivery fills the members table by the batch, while the
    statistics still say "empty": the claim's member lookup was then planned on the narrowest index leading
    with the connection, scanning every member of it for each row (1.2 s a batch at 20,000). Called every
    few batches while a connection drains; a look at pg_stat_user_tables when nothing is stale. `written`:
    the member rows this drain wrote since its last refresh (the statistics' own count lags by up to
    seconds). Returns the tables analysed."""
    if not _postgres():
        return []
    with db.cursor() as cursor:
        cursor.execute(STALE_TABLES_SQL, {"written": written})
        stale = [name for (name,) in cursor.fetchall()]
        for name in stale:
            cursor.execute(f"ANALYZE {db.ops.quote_name(name)}")
    return stale


def _claimed(row: Sequence) -> Claimed:
    pk, identity_type, value, action, profile_id, version, attempts, created_at, attributes, state, fingerprint = row
    if isinstance(attributes, str | bytes):  # SQLite, and psycopg where Django leaves jsonb undecoded
        attributes = json.loads(attributes)
    if isinstance(created_at, float | int):  # PostgreSQL's JSON batch: seconds since the epoch
        created_at = datetime.fromtimestamp(created_at, UTC)
    elif isinstance(created_at, str):
        created_at = parse_datetime(created_at)
        if created_at is not None and created_at.tzinfo is None:  # SQLite rows the ORM wrote: UTC, no offset
            created_at = created_at.replace(tzinfo=UTC)
    held = state if state in MAY_BE_HELD else None
    acknowledged = (fingerprint or "") if state == ADDED else ""
    return Claimed(
        pk,
        identity_type,
        value,
        action,
        profile_id,
        version,
        attempts,
        created_at,
        attributes or {},
        held,
        acknowledged,
        state,
    )


def claim(connection_id: int, size: int, now: datetime, *, after: int = 0, write_ahead: bool) -> list[Claimed]:
    """The connection's next `size` due changes with an id above `after`, in id order. With `write_ahead`,
    their adds are committed as "maybe held" before this returns (the partner may hold them from the moment
    the call starts); the `held` state returned is the one from before."""
    parameters = {
        "connection": connection_id,
        "after": after,
        "now": db.ops.adapt_datetimefield_value(now),
        "size": size,
    }
    with db.cursor() as cursor:
        if write_ahead and _postgres():
            with transaction.atomic():
                cursor.execute(ORDERED_SCAN_ONLY_SQL)
                cursor.execute(CLAIM_AND_WRITE_AHEAD_SQL, parameters)
                (document,) = cursor.fetchone()
                return [_claimed(row) for row in fast_json.loads(document)]
        cursor.execute(CLAIM_SQL, parameters)
        batch = [_claimed(row) for row in cursor.fetchall()]
        if write_ahead:
            write_ahead_adds(connection_id, [p for p in batch if p.action == "add" and not p.acknowledged], now)
        return batch


def write_ahead_adds(connection_id: int, adds: list[Claimed], now: datetime) -> None:
    """Commit, before the call, that the partner may hold these identities from now on (claim() does it for
    every add but those of members acknowledged with a fingerprint, which delivery may skip)."""
    if not adds:
        return
    with transaction.atomic(), db.cursor() as cursor:
        cursor.executemany(WRITE_AHEAD_SQL, [(connection_id, p.identity_type, p.value, now) for p in adds])


def release_unsent(connection_id: int, batch: list[Claimed]) -> None:
    """Undo the write-ahead of a batch claimed but never sent (the drain stopped before its call): the adds
    it marked "maybe held" go back to the state they had, so that a member who leaves before the next drain
    is not sent a removal for an add that never went out. Only the lease holder writes a connection's
    members, so a "maybe held" mark found here is the claim's own."""
    written_ahead = [p for p in batch if p.action == "add" and p.prior_state in (None, *RESTORABLE)]
    if not written_ahead:
        return
    match = f"connection_id = %s AND identity_type = %s AND value = %s AND state = '{MAYBE_HELD}'"
    with transaction.atomic(), db.cursor() as cursor:
        cursor.executemany(
            f"DELETE FROM {MEMBER} WHERE {match}",
            [(connection_id, p.identity_type, p.value) for p in written_ahead if p.prior_state is None],
        )
        cursor.executemany(
            f"UPDATE {MEMBER} SET state = %s WHERE {match}",
            [(p.prior_state, connection_id, p.identity_type, p.value) for p in written_ahead if p.prior_state],
        )


@dataclass
class BatchRecord:
    """What one answered batch changes in the database."""

    connection_id: int
    now: datetime
    # (identity type, value, state, reason, fingerprint of the add acknowledged or "") as the partner answered
    members: list[tuple[str, str, str, str, str]]
    settled: list[tuple[int, int]]  # (pending change id, version sent): delete unless a newer word came
    retried: list[tuple[int, float, str]]  # (pending change id, delay in seconds, reason)
    sent: int
    delivered: int
    rejected: int
    duration_ms: int
    http_status: int | None
    task_id: str

    @property
    def result(self) -> str:
        partial = self.rejected or self.retried
        return DeliveryAttempt.Result.PARTIAL.value if partial else DeliveryAttempt.Result.OK.value


def record(batch: BatchRecord) -> None:
    """Write one answered batch, atomically: every outcome, the settled changes deleted (version-guarded),
    the retried ones backed off, the connection's last delivery, and the attempt when anything was sent."""
    if _postgres():
        with db.cursor() as cursor:
            cursor.execute(RECORD_SQL, _record_parameters(batch))
        return
    with transaction.atomic(), db.cursor() as cursor:
        if batch.members:
            cursor.executemany(
                f"INSERT INTO {MEMBER} (connection_id, identity_type, value, state, reason, fingerprint, updated_at) "
                f"VALUES (%s, %s, %s, %s, %s, %s, %s) {MEMBER_UPSERT_CONFLICT}",
                [(batch.connection_id, *member, batch.now) for member in batch.members],
            )
        if batch.settled:
            cursor.executemany(f"DELETE FROM {PENDING} WHERE id = %s AND version = %s", batch.settled)
        if batch.retried:
            cursor.executemany(
                f"UPDATE {PENDING} SET attempts = attempts + 1, next_attempt_at = %s, last_error = %s WHERE id = %s",
                [(batch.now + timedelta(seconds=delay), reason, pk) for pk, delay, reason in batch.retried],
            )
        Connection.objects.filter(pk=batch.connection_id).update(last_delivered_at=batch.now)
        if batch.sent:
            DeliveryAttempt.objects.create(
                connection_id=batch.connection_id,
                at=batch.now,
                duration_ms=batch.duration_ms,
                http_status=batch.http_status,
                task_id=batch.task_id,
                sent=batch.sent,
                delivered=batch.delivered,
                rejected=batch.rejected,
                retried=len(batch.retried),
                result=batch.result,
            )


def _record_parameters(batch: BatchRecord) -> dict:
    return {
        "connection": batch.connection_id,
        "now": batch.now,
        "members": fast_json.dumps(batch.members).decode(),
        "settled": fast_json.dumps(batch.settled).decode(),
        "retried": fast_json.dumps(batch.retried).decode(),
        "sent": batch.sent,
        "delivered": batch.delivered,
        "rejected": batch.rejected,
        "retried_count": len(batch.retried),
        "result": batch.result,
        "duration_ms": batch.duration_ms,
        "http_status": batch.http_status,
        "task_id": batch.task_id,
    }
