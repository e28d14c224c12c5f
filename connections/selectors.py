"""Reads of what partners hold: each connection's members as the partner last answered, and which outputs
an audience is connected to."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from connections.models import Connection, ConnectionMember
from connections.status import CONNECTED


def held_identities(connection_id: int, identities: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of these (type, value) identities that the partner currently holds (we delivered them as added)."""
    rows = ConnectionMember.objects.filter(
        connection_id=connection_id, value__in={v for _, v in identities}, state=ConnectionMember.State.ADDED
    ).values_list("identity_type", "value")
    return {row for row in rows if row in identities}


def member_counts(connection: Connection) -> dict[str, int]:
    """{"delivered": identities the partner holds from us, "rejected": identities it refused for good}."""
    return ConnectionMember.objects.filter(connection=connection).aggregate(
        delivered=Count("id", filter=Q(state=ConnectionMember.State.ADDED)),
        rejected=Count("id", filter=Q(state=ConnectionMember.State.REJECTED)),
    )


def rejected_members(connection: Connection) -> QuerySet[ConnectionMember]:
    """The identities the partner refused, newest first, with its reasons."""
    return ConnectionMember.objects.filter(connection=connection, state=ConnectionMember.State.REJECTED).order_by(
        "-updated_at", "-id"
    )


def connected_output_counts(audience_ids: Iterable[int]) -> dict[int, int]:
    """Audience id -> how many outputs it is connected to (a connection being deleted no longer counts),
    for every id given, in one query."""
    ids = list(audience_ids)
    rows = (
        Connection.objects.filter(audience_id__in=ids, status__in=CONNECTED)
        .values("audience_id")
        .annotate(n=Count("output_id", distinct=True))
        .values_list("audience_id", "n")
    )
    return {audience_id: 0 for audience_id in ids} | dict(rows)
