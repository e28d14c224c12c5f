"""The sweeper re-rings work that no task is handling: a lost task, a killed worker or a
restarted broker may delay a change, never lose it. Run by beat every FORWARDING_SWEEP_INTERVAL."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from audiences.membership.deferred import deferred_evaluations_waiting, ring_deferred_evaluations
from audiences.membership.recompute import audiences_due_for_recompute, recompute_queue
from connections.models import Connection
from forwarding.doorbell import ring, ring_end, ring_probe
from forwarding.leases import free_of_lease, not_throttled
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.sync import jobs_ring_stalled
from outputs.partners.base import Capability
from outputs.partners.registry import partner_keys_with

ATTEMPT_LOG_DAYS = 30
# A recompute this long overdue was lost (its task never ran); ring it again.
RECOMPUTE_GRACE = timedelta(minutes=5)
# Evaluations deferred this long ago whose ring was lost (or whose lock was still held when it rang).
DEFERRED_EVALUATION_GRACE = timedelta(seconds=10)


def sweep() -> dict[str, int]:
    now = timezone.now()
    # Nobody holds it (a killed worker's lease has expired), and it is not waiting as a whole
    # (a 429's Retry-After, its backoff while the partner is down: forwarding/recovery.py).
    ready = free_of_lease(now) & not_throttled(now)
    due = PendingChange.objects.filter(next_attempt_at__lte=now).values("connection_id")
    to_deliver = list(
        Connection.objects.filter(ready, status=Connection.Status.SENDING, pk__in=due)
        # Bulk connections are uploaded on their upload criteria by forwarding/bulk.py, not re-rung here.
        .exclude(output__partner_key__in=partner_keys_with(Capability.BULK))
        .values_list("pk", flat=True)
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
    # Not those backing off after a failed recompute (recorded on the audience, audiences/membership/recompute.py).
    stale = audiences_due_for_recompute(grace=RECOMPUTE_GRACE)
    for audience_id, version in stale:
        recompute_queue(audience_id, version)
    jobs = jobs_ring_stalled(now)
    deferred = deferred_evaluations_waiting(grace=DEFERRED_EVALUATION_GRACE)
    if deferred:
        ring_deferred_evaluations()
    purged, _ = DeliveryAttempt.objects.filter(at__lt=now - timedelta(days=ATTEMPT_LOG_DAYS)).delete()
    return {
        "delivering": len(to_deliver),
        "ending": len(to_end),
        "probing": len(to_probe),
        "recomputing": len(stale),
        "jobs": jobs,
        "deferred_evaluations": int(deferred),
        "purged": purged,
    }
