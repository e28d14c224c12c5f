"""Reads about connections: the figures the admin and the API show."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from django.db.models import Count, Q
from django.utils import timezone

from audiences.models import AudienceMembership, Identity
from connections.models import Connection
from connections.selectors import member_counts
from forwarding.models import PendingChange


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


def connection_stats(connection: Connection) -> ConnectionStats:
    accepted = connection.output.partner_class.accepted_identity_types
    size = AudienceMembership.objects.filter(audience_id=connection.audience_id).count()
    reachable = (
        Identity.objects.filter(
            type__in=accepted,
            profile__memberships__audience_id=connection.audience_id,
        )
        .values("profile_id")
        .distinct()
        .count()
    )
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
