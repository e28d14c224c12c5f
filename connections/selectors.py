"""Reads of what partners hold: each connection's members as the partner last answered, and which outputs
an audience is connected to."""

from __future__ import annotations

from collections.abc import Iterable

from django.db.models import Count, Q, QuerySet

from connections.models import Connection, ConnectionMember
from connections.status import CONNECTED

# The states in which the partner holds a member, or may hold it (an add whose answer was never recorded).
MAY_BE_HELD = (ConnectionMember.State.ADDED, ConnectionMember.State.MAYBE_HELD)


def held_identities(connection_id: int, identities: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Those of these (type, value) identities that the partner holds or may hold, with their state: we
    delivered them as added, or sent an add whose answer we never recorded."""
    rows = ConnectionMember.objects.filter(
        connection_id=connection_id, value__in={v for _, v in identities}, state__in=MAY_BE_HELD
    ).values_list("identity_type", "value", "state")
    return {(t, v): state for t, v, state in rows if (t, v) in identities}


def acknowledged_fingerprints(connection_id: int, identities: set[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """Those of these identities the partner holds as we last added them, with the fingerprint of that add."""
    rows = (
        ConnectionMember.objects.filter(
            connection_id=connection_id, value__in={v for _, v in identities}, state=ConnectionMember.State.ADDED
        )
        .exclude(fingerprint="")
        .values_list("identity_type", "value", "fingerprint")
    )
    return {(t, v): fingerprint for t, v, fingerprint in rows if (t, v) in identities}


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
