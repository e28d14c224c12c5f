"""Reads about connections: the figures the admin and the API show."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime

from django.db import connection as db
from django.db.models import Count, Q
from django.utils import timezone

from audiences.models import AudienceMembership, Identity
from connections.models import Connection
from connections.selectors import member_counts
from forwarding.models import PendingChange

# The audience's size and its members with an identity of an accepted type. The second is a WHERE EXISTS, which
# the planner may run as a hash semi-join over the identities (a large audience) or as index probes on
# (profile, type) (a small one); an EXISTS in the select list would be probed once per member whatever the size.
REACH_SQL = """
SELECT (SELECT COUNT(*) FROM {membership} m WHERE m.audience_id = %s),
       (SELECT COUNT(*) FROM {membership} m
        WHERE m.audience_id = %s
          AND EXISTS (SELECT 1 FROM {identity} i WHERE i.profile_id = m.profile_id AND i.type IN ({types})))
"""


@dataclass
class ConnectionStats:
    audience_size: int
    with_accepted_identity: int  # members having at least one identity the partner takes
    without_accepted_identity: int  # members the partner cannot receive (e.g. no email for Mailchimp)
    delivered: int  # identities the partner holds from us now
    pending: int  # changes waiting to be sent
    retrying: int  # of which waiting for a retry after an error
    rejected: int  # identities the partner refused for good
    fields_skipped: int  # delivered identities whose refused fields (merge values) were left out

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def audience_reach(audience_id: int, accepted_types: Sequence[str]) -> tuple[int, int]:
    """(members, members with at least one identity of these types), in one query (REACH_SQL).
    Shared with the identity funnel (forwarding/funnel.py)."""
    types = sorted(accepted_types)
    if not types:
        return AudienceMembership.objects.filter(audience_id=audience_id).count(), 0
    sql = REACH_SQL.format(
        identity=Identity._meta.db_table,
        membership=AudienceMembership._meta.db_table,
        types=", ".join(["%s"] * len(types)),
    )
    with db.cursor() as cursor:
        cursor.execute(sql, [audience_id, audience_id, *types])
        size, reachable = cursor.fetchone()
    return int(size), int(reachable)


def connection_stats(connection: Connection) -> ConnectionStats:
    size, reachable = audience_reach(connection.audience_id, connection.output.partner_class.accepted_identity_types)
    members = member_counts(connection)
    pending = PendingChange.objects.filter(connection=connection).aggregate(
        total=Count("id"), retrying=Count("id", filter=Q(attempts__gt=0))
    )
    return ConnectionStats(
        audience_size=size,
        with_accepted_identity=reachable,
        without_accepted_identity=size - reachable,
        delivered=members["delivered"],
        pending=pending["total"],
        retrying=pending["retrying"],
        rejected=members["rejected"],
        fields_skipped=members["fields_skipped"],
    )


def pending_due_count(connection: Connection, *, now: datetime | None = None) -> int:
    """The connection's pending changes due now (what a delivery would take next)."""
    return PendingChange.objects.filter(connection=connection, next_attempt_at__lte=now or timezone.now()).count()
