"""Evaluations deferred while an audience's membership lock is held (a recompute or a connect running).

The Events API never waits for a recompute (audiences/membership/locks.py): it evaluates the audiences
whose lock it can take and leaves out those held exclusively (and those whose criteria refer to them).
Each profile left out is written here, in the request's transaction, with the audiences it missed and
the identities the request gave it. Once the lock is free the profile is evaluated again: every active
audience (an evaluation is idempotent), and where it stays a member of an audience it missed, its new
identities are published as the request would have done.

The rows are the durable record; the task is the doorbell, rung when a request defers, when a holder of
the lock commits (recompute, connect) and by forwarding's sweeper for rows left waiting. The task never
waits for a lock either: what is still held stays deferred for the next ring.
"""

# ruff: noqa: S608 (table names from model metadata; values are parameters)
from __future__ import annotations

import json
import logging
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta

from django.db import DatabaseError, transaction
from django.db import connection as db
from django.utils import timezone

from audiences.membership.evaluation import audiences_held, evaluate_profiles_without_waiting
from audiences.membership.ledger import publish_members_updated
from audiences.membership.locks import held_exclusively
from audiences.models import AudienceMembership, DeferredEvaluation
from config import queueing

logger = logging.getLogger(__name__)

DEFERRED_TASK = "audiences.tasks.evaluate_deferred"
CLAIM = 500  # profiles evaluated per transaction


def defer_evaluations(
    profile_ids: Sequence[int],
    *,
    audience_ids: Sequence[int],
    identity_ids: Mapping[int, Sequence[int]] | None = None,
    reason: str,
    now: datetime | None = None,
    ring: bool = True,
) -> None:
    """Record, in the caller's transaction, that these profiles still need evaluating for these audiences
    (with the identities the caller added to each); rings the task once it commits."""
    if not profile_ids or not audience_ids:
        return
    now = now or timezone.now()
    identity_ids = identity_ids or {}
    DeferredEvaluation.objects.bulk_create(
        [_row(pk, audience_ids, identity_ids.get(pk, ()), reason, now) for pk in sorted(set(profile_ids))]
    )
    if ring:
        ring_deferred_evaluations_after_commit(unless_held=audience_ids)


def _row(
    profile_id: int, audience_ids: Iterable[int], identity_ids: Iterable[int], reason: str, now: datetime
) -> DeferredEvaluation:
    return DeferredEvaluation(
        profile_id=profile_id,
        audience_ids=sorted(audience_ids),
        identity_ids=sorted(identity_ids),
        reason=reason[:200],
        deferred_at=now,
    )


def ring_deferred_evaluations() -> None:
    """Queue the task (a broker outage only delays it: the sweeper rings for rows left waiting)."""
    queueing.send_safely(DEFERRED_TASK)


def _still_held(audience_ids: Sequence[int]) -> bool:
    """held_exclusively, after the caller's commit: a database error there must not fail a request whose
    data is stored, so it counts as free (the ring goes; the task finds out)."""
    try:
        return held_exclusively(audience_ids)
    except DatabaseError:
        logger.warning("could not check the deferred audiences' locks; ringing", exc_info=True)
        return False


def ring_deferred_evaluations_after_commit(*, only_if_waiting: bool = False, unless_held: Sequence[int] = ()) -> None:
    """Ring once the current transaction commits: by a request that deferred, and by the holders of an
    audience's membership lock (`only_if_waiting`: only when deferred rows are committed by then; a request
    committing later rings itself, and finds the lock free).

    `unless_held` (a request's deferred audiences): no ring while one of their locks is still held after the
    request committed, as its holder rings once it commits and then sees the request's rows. During a long
    recompute every request defers, and a ring each would only find the rows still waiting."""

    def ring() -> None:
        if unless_held and _still_held(unless_held):
            return
        if not only_if_waiting or DeferredEvaluation.objects.exists():
            ring_deferred_evaluations()

    transaction.on_commit(ring)


# One run of evaluate_deferred at a time (a session advisory lock, PostgreSQL): "DEFE", 1.
RUNNER_LOCK = (0x44454645, 1)


def evaluate_deferred(*, limit: int = CLAIM) -> int:
    """Evaluate deferred profiles, `limit` at a time, each batch in its own transaction, until none is left
    that can be evaluated now. Returns how many rows were done.

    One run at a time: a ring while another run works returns at once, and the running one looks again for
    rows it can take after it lets go, so none committed meanwhile is left waiting. The backlog a long
    recompute leaves behind (every request of its duration deferred) then takes one of the worker's slots,
    not each of them, and real-time deliveries keep the others."""
    done = 0
    while True:
        if not _runner_lock(take=True):
            return done
        try:
            while True:
                claimed, finished = _evaluate_batch(limit)
                done += finished
                if claimed < limit or not finished:
                    break
        finally:
            _runner_lock(take=False)
        if not _claimable_rows_left():
            return done


def _runner_lock(*, take: bool) -> bool:
    """Take the runner lock without waiting (True when taken), or give it back. Always True on SQLite."""
    if db.vendor != "postgresql":
        return True
    with db.cursor() as cursor:
        function = "pg_try_advisory_lock" if take else "pg_advisory_unlock"
        cursor.execute(f"SELECT {function}(%s, %s)", list(RUNNER_LOCK))
        return bool(cursor.fetchone()[0])


def _not_waiting_for(held: Sequence[int]) -> tuple[str, list]:
    """A WHERE clause (and its parameters) keeping the rows none of whose audiences is in `held`. Only
    PostgreSQL has the locks; there `audience_ids` is a jsonb array of numbers."""
    if not held:
        return "", []
    where = (
        "WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements_text(audience_ids) AS a(id) WHERE a.id::bigint = ANY(%s))"
    )
    return where, [list(held)]


def _claimable_rows_left() -> bool:
    table = DeferredEvaluation._meta.db_table
    with transaction.atomic():
        where, params = _not_waiting_for(sorted(audiences_held()))
        with db.cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {table} {where} LIMIT 1", params)
            return cursor.fetchone() is not None


def _evaluate_batch(limit: int) -> tuple[int, int]:
    """One transaction: claim and delete up to `limit` rows whose audiences are free now, evaluate their
    profiles without waiting, and defer again (without ringing: the lock's holder rings as it commits) what
    a lock taken meanwhile still holds. Returns (rows claimed, rows done).

    Rows waiting for an audience still held are not touched: the lock's holder rings as it commits. (Taking
    them only to defer them again made every ring during a recompute evaluate and rewrite the whole backlog,
    hundreds of milliseconds of the workers that deliver real-time changes.)"""
    table = DeferredEvaluation._meta.db_table
    with transaction.atomic():
        where, params = _not_waiting_for(sorted(audiences_held()))
        with db.cursor() as cursor:
            cursor.execute(
                f"""
                DELETE FROM {table} WHERE id IN (
                    SELECT id FROM {table} {where} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED
                ) RETURNING profile_id, audience_ids, identity_ids, reason
                """,
                [*params, limit],
            )
            rows = cursor.fetchall()
        if not rows:
            return 0, 0
        missed: dict[int, set[int]] = defaultdict(set)
        new_identities: dict[int, set[int]] = defaultdict(set)
        reasons: dict[str, list[int]] = defaultdict(list)
        for profile_id, audience_ids, identity_ids, reason in rows:
            missed[profile_id].update(_ints(audience_ids))
            new_identities[profile_id].update(_ints(identity_ids))
            reasons[reason].append(profile_id)
        again: set[int] = set()  # profiles an audience they missed is still left out of (a lock taken meanwhile)
        changes: dict[int, tuple[list[int], list[int]]] = {}
        # One evaluation per reason, so the change log says why as the request would have.
        for reason, profile_ids in sorted(reasons.items()):
            evaluation = evaluate_profiles_without_waiting(sorted(set(profile_ids)), reason=reason)
            changes.update(evaluation.changes)
            held_again = sorted(pk for pk in set(profile_ids) if missed[pk] & evaluation.left_out)
            if held_again:
                # Again (the profile, all of what it missed): the deferred audiences the lock's holder
                # will ring for, and nothing lost if the batch's evaluation of the others raced it.
                now = timezone.now()
                DeferredEvaluation.objects.bulk_create(
                    _row(pk, missed[pk], new_identities[pk], reason, now) for pk in held_again
                )
                again.update(held_again)
        _publish_new_identities(
            {pk: audiences for pk, audiences in missed.items() if pk not in again},
            {pk: ids for pk, ids in new_identities.items() if pk not in again},
            changes,
        )
        done = sum(1 for row in rows if row[0] not in again)
    return len(rows), done


def _publish_new_identities(
    missed: Mapping[int, set[int]],
    new_identities: Mapping[int, set[int]],
    changes: Mapping[int, tuple[list[int], list[int]]],
) -> None:
    """Where a profile stays a member of an audience it missed, send the identities its request added (a
    member who entered goes with all its identities already), as the request does for the others."""
    wanted = {pk: ids for pk, ids in new_identities.items() if ids}
    if not wanted:
        return
    memberships = AudienceMembership.objects.filter(profile_id__in=list(wanted))
    memberships = memberships.values_list("profile_id", "audience_id")
    stayed: dict[int, list[int]] = defaultdict(list)
    for profile_id, audience_id in memberships:
        entered = changes.get(profile_id, ([], []))[0]
        if audience_id in missed[profile_id] and audience_id not in entered:
            stayed[profile_id].append(audience_id)
    for profile_id, audience_ids in sorted(stayed.items()):
        publish_members_updated(
            profile_id=profile_id, audience_ids=sorted(audience_ids), identity_ids=sorted(wanted[profile_id])
        )


def _ints(value: object) -> list[int]:
    # Raw cursors hand JSON columns over as text on some backends.
    if isinstance(value, str | bytes):
        value = json.loads(value)
    return [int(v) for v in value or ()]


def deferred_evaluations_waiting(*, grace: timedelta) -> bool:
    """Whether a deferred evaluation has waited longer than `grace` (its ring lost): the sweeper rings."""
    return DeferredEvaluation.objects.filter(deferred_at__lt=timezone.now() - grace).exists()
