"""A connection's lease: one worker at a time delivers (or ends) a connection, so the partner sees each
identity's changes in order. The lease is a timestamp on the row, so a killed worker's lease simply expires
(FORWARDING_LEASE_SECONDS) and the sweeper rings the connection again."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from connections.models import Connection


def acquire_lease(connection_id: int, *, statuses: tuple[str, ...] = (Connection.Status.SENDING,)) -> bool:
    now = timezone.now()
    taken = Connection.objects.filter(
        Q(delivery_lease_until__isnull=True) | Q(delivery_lease_until__lt=now),
        pk=connection_id,
        status__in=statuses,
    ).update(delivery_lease_until=now + timedelta(seconds=settings.FORWARDING["LEASE_SECONDS"]))
    return taken == 1


def renew_lease(connection_id: int) -> None:
    Connection.objects.filter(pk=connection_id).update(
        delivery_lease_until=timezone.now() + timedelta(seconds=settings.FORWARDING["LEASE_SECONDS"])
    )


def release_lease(connection_id: int) -> None:
    Connection.objects.filter(pk=connection_id).update(delivery_lease_until=None)
