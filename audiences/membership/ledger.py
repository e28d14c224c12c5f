"""The membership ledger: the one writer of membership rows and of the change log.

Every membership change goes through here, in the caller's transaction: the rows of AudienceMembership,
one MembershipChange per profile entering or leaving, and the change published to the registered consumers
(audiences.membership.consumers), whose own writes (forwarding's outbox) commit or roll back with it. Two
forms: profile ids in Python (real-time evaluation, the per-profile recompute), or a whole member set in a
temporary table, applied set-wise in PostgreSQL (the recompute at scale).
"""

# ruff: noqa: S608 (the SQL text holds table names from model metadata and constants; values are parameters)
from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from django.db import connection as db
from django.db import transaction
from django.db.models import Q

from audiences.membership.consumers import MembershipDelta, membership_consumers
from audiences.models import AudienceMembership, MembershipChange
from config import metrics
from config.db import insert_rows

# The temporary tables of apply_membership_table (dropped before it returns).
ENTERED_TABLE = "audience_recompute_entered"
LEFT_TABLE = "audience_recompute_left"


def apply_membership_deltas(
    deltas: Mapping[int, tuple[Sequence[int], Sequence[int]]],
    *,
    now: datetime,
    reason: str,
    identities: Mapping[int, Sequence[tuple[str, str]]] | None = None,
) -> None:
    """Write membership rows and the change log for several audiences at once (audience id -> (entered
    profile ids, left profile ids)) and publish them. A fixed handful of statements whatever the number of
    audiences: real-time evaluation of a bulk request changes many audiences at once. `identities`: every
    identity of these profiles, when the caller read them in this transaction (handed to the consumers)."""
    deltas = {a: MembershipDelta(list(e), list(lf), identities) for a, (e, lf) in deltas.items() if e or lf}
    if not deltas:
        return
    consumers = membership_consumers()
    insert_rows(
        AudienceMembership._meta.db_table,
        ("audience_id", "profile_id", "entered_at"),
        [(a, p, now) for a, d in deltas.items() for p in d.entered],
    )
    leaving = Q()
    for audience_id, delta in deltas.items():
        if delta.left:
            leaving |= Q(audience_id=audience_id, profile_id__in=delta.left)
    if leaving:
        AudienceMembership.objects.filter(leaving).delete()
    insert_rows(
        MembershipChange._meta.db_table,
        ("audience_id", "profile_id", "kind", "reason", "at"),
        [
            (a, p, kind, reason, now)
            for a, delta in deltas.items()
            for kind, profiles in (
                (MembershipChange.Kind.ENTERED.value, delta.entered),
                (MembershipChange.Kind.LEFT.value, delta.left),
            )
            for p in profiles
        ],
    )
    for consumer in consumers:
        consumer.members_changed(deltas)
    _count_after_commit({a: (len(d.entered), len(d.left)) for a, d in deltas.items()})


def apply_membership_table(*, audience_id: int, members_table: str, now: datetime, reason: str) -> tuple[int, int]:
    """Make the audience's members exactly the profiles of `members_table` (a temporary table whose
    `profile_id` is its primary key), set-wise on PostgreSQL: nothing per profile passes through Python.
    Returns (entered, left). `members_table` is an identifier chosen by the caller, never user input."""
    consumers = membership_consumers()
    membership = AudienceMembership._meta.db_table
    change = MembershipChange._meta.db_table
    with db.cursor() as cursor:
        # Dropped at the end (so a caller's outer transaction may apply twice); ON COMMIT DROP is the
        # safety net. An error rolls the CREATE back with everything else.
        for table in (ENTERED_TABLE, LEFT_TABLE):
            cursor.execute(f"CREATE TEMPORARY TABLE {table} (profile_id bigint NOT NULL) ON COMMIT DROP")
        # entered = new - current, left = current - new, written as they are applied: RETURNING keeps only
        # the rows this statement changed, so a profile that real-time evaluation entered or removed
        # meanwhile is neither doubled nor logged twice.
        cursor.execute(
            f"""
            WITH inserted AS (
                INSERT INTO {membership} (audience_id, profile_id, entered_at)
                SELECT %s, n.profile_id, %s FROM {members_table} n
                WHERE NOT EXISTS (SELECT 1 FROM {membership} m WHERE m.audience_id = %s AND m.profile_id = n.profile_id)
                ON CONFLICT (audience_id, profile_id) DO NOTHING
                RETURNING profile_id
            )
            INSERT INTO {ENTERED_TABLE} (profile_id) SELECT profile_id FROM inserted
            """,
            [audience_id, now, audience_id],
        )
        entered = cursor.rowcount
        cursor.execute(
            f"""
            WITH deleted AS (
                DELETE FROM {membership} m
                WHERE m.audience_id = %s
                AND NOT EXISTS (SELECT 1 FROM {members_table} n WHERE n.profile_id = m.profile_id)
                RETURNING m.profile_id
            )
            INSERT INTO {LEFT_TABLE} (profile_id) SELECT profile_id FROM deleted
            """,
            [audience_id],
        )
        left = cursor.rowcount
        if entered or left:
            # Statistics, so the consumers' joins on these tables are planned for their real size.
            cursor.execute(f"ANALYZE {ENTERED_TABLE}")
            cursor.execute(f"ANALYZE {LEFT_TABLE}")
            cursor.execute(
                f"""
                INSERT INTO {change} (audience_id, profile_id, kind, reason, at)
                SELECT %s, profile_id, %s, %s, %s FROM {ENTERED_TABLE}
                UNION ALL
                SELECT %s, profile_id, %s, %s, %s FROM {LEFT_TABLE}
                """,
                [
                    *(audience_id, MembershipChange.Kind.ENTERED.value, reason, now),
                    *(audience_id, MembershipChange.Kind.LEFT.value, reason, now),
                ],
            )
    if entered or left:
        for consumer in consumers:
            consumer.members_changed_in_tables(
                audience_id=audience_id,
                entered_table=ENTERED_TABLE if entered else None,
                left_table=LEFT_TABLE if left else None,
            )
    with db.cursor() as cursor:
        cursor.execute(f"DROP TABLE {ENTERED_TABLE}, {LEFT_TABLE}")
    _count_after_commit({audience_id: (entered, left)})
    return entered, left


def _count_after_commit(counts: Mapping[int, tuple[int, int]]) -> None:
    """Membership changes by audience (config/metrics.py), counted once they are committed."""

    def count() -> None:
        for audience_id, (entered, left) in counts.items():
            for change, number in (("entered", entered), ("left", left)):
                if number:
                    metrics.MEMBERSHIP_CHANGES.labels(str(audience_id), change).inc(number)

    transaction.on_commit(count)


def publish_members_updated(
    *, profile_id: int, audience_ids: Sequence[int], identity_ids: Sequence[int] | None
) -> None:
    """Tell the consumers that a profile staying in these audiences has new identities (`identity_ids`) or
    new attributes (None). Membership rows and the change log do not change."""
    audience_ids = list(audience_ids)
    if not audience_ids:
        return
    for consumer in membership_consumers():
        consumer.members_updated(profile_id=profile_id, audience_ids=audience_ids, identity_ids=identity_ids)


def publish_identities_removed(
    *, profile_id: int, audience_ids: Sequence[int], identities: Sequence[tuple[str, str]]
) -> None:
    """Tell the consumers that a profile, member of these audiences, is losing these identities (deleted after
    this call, in the same transaction). Membership rows and the change log do not change here."""
    audience_ids = list(audience_ids)
    if not audience_ids or not identities:
        return
    for consumer in membership_consumers():
        consumer.identities_removed(profile_id=profile_id, audience_ids=audience_ids, identities=list(identities))


def publish_profile_erasing(*, erasure_id: int, identities: Sequence[tuple[str, str]]) -> int:
    """Tell the consumers that a profile with these identities is being erased (audiences.erasure), before
    its identities are deleted in the same transaction. Returns the removes they planned."""
    return sum(
        consumer.profile_erasing(erasure_id=erasure_id, identities=list(identities))
        for consumer in membership_consumers()
    )
