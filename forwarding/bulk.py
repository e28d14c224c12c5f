"""Bulk uploads: the home of connections whose partner declares Capability.BULK.

Their changes are planned into the outbox like any other (coalesced per identity: the last word wins, so an
identity added then removed between two uploads sends nothing), but no doorbell rings for them and the
sweeper leaves them alone. Instead beat runs flush_due_uploads() every FORWARDING_BULK_CHECK_INTERVAL seconds:
a sending bulk connection whose backlog meets its upload criteria (the partner's default_upload_criteria:
wait N minutes since the oldest change waiting, or M changes waiting, whichever comes first) gets an upload
task, and upload_connection() sends the coalesced outbox through the same path as real-time delivery
(forwarding/delivery.py: the connection's lease, batches of the partner's request size, every outcome
recorded, transient errors backed off). A lost upload task is found again by the next check, since the
backlog is still there and still due.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.core.exceptions import ImproperlyConfigured
from django.db.models import Count, Min
from django.utils import timezone

from config import queueing
from connections.models import Connection
from forwarding.delivery import DeliveryReport, deliver_connection
from forwarding.leases import free_of_lease, not_throttled
from forwarding.models import PendingChange
from outputs.partners.base import Capability, UploadCriteria
from outputs.partners.registry import partner_keys_with

UPLOAD_TASK = "forwarding.tasks.upload_connection"


@dataclass(frozen=True)
class Backlog:
    """A bulk connection's outbox as the upload criteria see it: the changes due now, and since when."""

    waiting: int = 0
    oldest: datetime | None = None


def upload_criteria(connection: Connection) -> UploadCriteria:
    """The criteria of one connection: its partner's default (the seam where per-connection criteria go)."""
    partner = connection.output.partner_class
    if partner.default_upload_criteria is None:  # prevented when the class is defined (base.check_declaration)
        raise ImproperlyConfigured(f"Bulk partner {partner.key} declares no default_upload_criteria.")
    return partner.default_upload_criteria


def upload_due(criteria: UploadCriteria, backlog: Backlog, now: datetime) -> bool:
    """First reached wins: enough changes waiting, or the oldest has waited long enough."""
    if backlog.waiting == 0:
        return False
    if backlog.waiting >= criteria.messages:
        return True
    return backlog.oldest is not None and backlog.oldest <= now - criteria.wait


def backlogs(connection_ids: list[int], now: datetime) -> dict[int, Backlog]:
    """The due backlog of each connection, in one query (a change backing off after a failed upload waits
    for its next_attempt_at, as in real-time delivery)."""
    rows = (
        PendingChange.objects.filter(connection_id__in=connection_ids, next_attempt_at__lte=now)
        .values("connection_id")
        .annotate(waiting=Count("id"), oldest=Min("created_at"))
        .values_list("connection_id", "waiting", "oldest")
    )
    return {connection_id: Backlog(waiting, oldest) for connection_id, waiting, oldest in rows}


def due_connections(*, now: datetime | None = None) -> list[int]:
    """The sending bulk connections, not being uploaded already (no live lease) nor waiting as a whole
    (a 429's Retry-After, a backoff while the partner is down), whose backlog is due."""
    now = now or timezone.now()
    keys = partner_keys_with(Capability.BULK)
    if not keys:
        return []
    connections = list(
        Connection.objects.filter(
            free_of_lease(now) & not_throttled(now), status=Connection.Status.SENDING, output__partner_key__in=keys
        )
        .select_related("output")
        .order_by("pk")
    )
    waiting = backlogs([c.pk for c in connections], now)
    return [c.pk for c in connections if upload_due(upload_criteria(c), waiting.get(c.pk, Backlog()), now)]


def flush_due_uploads(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's check (forwarding.tasks.flush_bulk_uploads): queue an upload for every due bulk connection.
    Queuing twice is harmless: the second upload finds the lease taken, or nothing left to send."""
    due = due_connections(now=now)
    for connection_id in due:
        queueing.send_safely(UPLOAD_TASK, connection_id)
    return {"uploading": len(due)}


def upload_connection(*, connection_id: int) -> DeliveryReport:
    """One upload: the connection's coalesced outbox, sent and recorded as real-time delivery does."""
    return deliver_connection(connection_id=connection_id)
