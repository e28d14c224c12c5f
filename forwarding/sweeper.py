"""The sweeper re-rings work that no task is handling: a lost task, a killed worker or a
restarted broker may delay a change, never lose it. Run by beat every FORWARDING_SWEEP_INTERVAL."""

from __future__ import annotations

from datetime import timedelta

from django.db.models import F, Q
from django.utils import timezone

from audiences.membership.recompute import recompute_queue
from audiences.models import Audience
from connections.models import Connection
from forwarding.doorbell import ring, ring_end, ring_probe
from forwarding.leases import free_of_lease, not_throttled
from forwarding.models import DeliveryAttempt, PendingChange

ATTEMPT_LOG_DAYS = 30
# A recompute this long overdue was lost (its task never ran); ring it again.
RECOMPUTE_GRACE = timedelta(minutes=5)


def sweep() -> dict[str, int]:
    now = timezone.now()
    # Nobody holds it (a killed worker's lease has expired), and it is not waiting as a whole
    # (a 429's Retry-After, its backoff while the partner is down: forwarding/recovery.py).
    ready = free_of_lease(now) & not_throttled(now)
    due = PendingChange.objects.filter(next_attempt_at__lte=now).values("connection_id")
    to_deliver = list(
        Connection.objects.filter(ready, status=Connection.Status.SENDING, pk__in=due).values_list("pk", flat=True)
    )
    for connection_id in to_deliver:
        ring(connection_id)
    to_end = list(Connection.objects.filter(ready, status=Connection.Status.ENDING).values_list("pk", flat=True))
    for connection_id in to_end:
        ring_end(connection_id)
    # Faulted by an outage: probed, and resumed by itself when the partner answers again.
    to_probe = list(
        Connection.objects.filter(
            ready, status=Connection.Status.FAULTED, fault_cause=Connection.FaultCause.OUTAGE
        ).values_list("pk", flat=True)
    )
    for connection_id in to_probe:
        ring_probe(connection_id)
    stale = list(
        Audience.objects.filter(updated_at__lt=now - RECOMPUTE_GRACE)
        .filter(
            Q(last_calculated_at__isnull=True, status=Audience.Status.ACTIVE)
            | Q(last_calculated_at__lt=F("updated_at"))
        )
        .values_list("pk", "criteria_version")
    )
    for audience_id, version in stale:
        recompute_queue(audience_id, version)
    purged, _ = DeliveryAttempt.objects.filter(at__lt=now - timedelta(days=ATTEMPT_LOG_DAYS)).delete()
    return {
        "delivering": len(to_deliver),
        "ending": len(to_end),
        "probing": len(to_probe),
        "recomputing": len(stale),
        "purged": purged,
    }
