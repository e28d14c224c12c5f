"""A connection's life cycle: connect (queueing the whole membership), pause, resume, test, delete, end.

Here in forwarding, not in connections/, because each step touches the outbox or the lease: connecting
backfills the outbox, resuming makes it due, deleting empties it and ends the connection under its lease.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.models import Audience
from connections.models import Connection, ConnectionMember
from connections.status import PAUSABLE
from connections.validation import check_connectable, clean_connection_settings
from forwarding import planner
from forwarding.backoff import backoff_seconds
from forwarding.doorbell import ring_after_commit, ring_end, ring_end_after_commit
from forwarding.leases import acquire_lease, release_lease
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.partner_calls import audience_ref, held_removals
from outputs.models import Output
from outputs.partners.http import PartnerError, TransientError

logger = logging.getLogger(__name__)
END_BATCH = 500


def connection_create(*, audience: Audience, output: Output, settings: Mapping[str, Any]) -> Connection:
    """Connect an audience to an output; its whole current membership is queued for sending."""
    cleaned = clean_connection_settings(output=output, settings=settings)
    with transaction.atomic():
        # Locked and read afresh, so an audience archived meanwhile is not connected.
        audience = Audience.objects.select_for_update().get(pk=audience.pk)
        check_connectable(audience=audience, output=output)
        connection = Connection.objects.create(
            audience=audience,
            output=output,
            settings=cleaned,
            status=Connection.Status.SENDING,
            status_changed_at=timezone.now(),
        )
        planner.plan_backfill(connection=connection)
    return connection


def _set_status(connection: Connection, status: str, reason: str = "") -> Connection:
    """Change the status, unless the connection is ending (a delete may have committed since
    the caller loaded it): an ending connection is never revived."""
    changed = (
        Connection.objects.filter(pk=connection.pk)
        .exclude(status=Connection.Status.ENDING)
        .update(status=status, status_reason=reason, status_changed_at=timezone.now())
    )
    if not changed:
        raise ValidationError({"status": ["This connection is being deleted."]})
    connection.refresh_from_db()
    return connection


def connection_pause(*, connection: Connection) -> Connection:
    """Stop sending; changes are still planned and sent on resume. Only a sending connection pauses
    (connections/status.py): a faulted one sends nothing already, and pausing it would hide its fault,
    so it is refused here, for the admin and the REST API alike. Pausing a paused one changes nothing."""
    paused = Connection.objects.filter(pk=connection.pk, status__in=PAUSABLE).update(
        status=Connection.Status.PAUSED, status_reason="Paused by a user.", status_changed_at=timezone.now()
    )
    connection.refresh_from_db()
    if paused or connection.status == Connection.Status.PAUSED:
        return connection
    if connection.status == Connection.Status.ENDING:
        raise ValidationError({"status": ["This connection is being deleted."]})
    raise ValidationError(
        {
            "status": [
                f"A {connection.status} connection cannot be paused: it sends nothing already, and pausing "
                "would hide its fault. Resume it once the partner works again."
            ]
        }
    )


@transaction.atomic
def connection_resume(*, connection: Connection) -> Connection:
    """Send again: clears a fault, makes every pending change due now, and rings delivery."""
    connection = _set_status(connection, Connection.Status.SENDING)
    PendingChange.objects.filter(connection=connection).update(next_attempt_at=timezone.now(), attempts=0)
    ring_after_commit(connection.pk)
    return connection


def connection_test(*, connection: Connection) -> tuple[bool, str]:
    """Ask the partner whether the credentials and the partner-side audience work."""
    partner = connection.output.partner()
    try:
        return True, partner.test_connection(connection.settings, audience_ref(connection.audience))
    except PartnerError as exc:
        return False, exc.message


def connection_delete(*, connection: Connection) -> Connection:
    """End the connection. Where the partner's settings ask for it (Mailchimp's "Delete on
    Subscription End"), every member this connection delivered is removed first, by a task."""
    with transaction.atomic():
        connection = _set_status(connection, Connection.Status.ENDING, "Deleting: removing delivered members.")
        PendingChange.objects.filter(connection=connection).delete()
        ring_end_after_commit(connection.pk)
    return connection


def connection_end(*, connection_id: int) -> str:
    """Finish ending a connection: clean up at the partner in batches, then delete the row.
    Returns what happened. Transient errors leave the connection ending (the sweeper retries)."""
    if not acquire_lease(connection_id, statuses=(Connection.Status.ENDING,)):
        return "busy or gone"
    try:
        connection = Connection.objects.select_related("output", "audience").get(pk=connection_id)
        partner = connection.output.partner()
        if partner.wants_cleanup_on_end():
            while True:
                held = list(
                    ConnectionMember.objects.filter(connection=connection, state=ConnectionMember.State.ADDED).order_by(
                        "id"
                    )[:END_BATCH]
                )
                if not held:
                    break
                changes = held_removals(partner, [(m.identity_type, m.value) for m in held])
                now = timezone.now()
                try:
                    partner.end_connection(connection.settings, audience_ref(connection.audience), changes)
                except PartnerError as exc:
                    DeliveryAttempt.objects.create(
                        connection=connection,
                        kind="cleanup",
                        at=now,
                        sent=len(changes),
                        result="transient" if isinstance(exc, TransientError) else "permanent",
                        error=exc.message[:2000],
                    )
                    Connection.objects.filter(pk=connection_id).update(
                        status_reason=f"Deleting: the partner refused the cleanup ({exc.message}); retrying."
                    )
                    logger.warning("cleanup of connection %s failed: %s", connection_id, exc.message)
                    delay = backoff_seconds(3, getattr(exc, "retry_after", None))
                    ring_end(connection_id, countdown=delay)
                    return f"retrying: {exc.message}"
                ConnectionMember.objects.filter(pk__in=[m.pk for m in held]).update(
                    state=ConnectionMember.State.REMOVED, updated_at=now
                )
                DeliveryAttempt.objects.create(
                    connection=connection,
                    kind="cleanup",
                    at=now,
                    sent=len(changes),
                    delivered=len(changes),
                    result="ok",
                )
        connection.delete()
        return "deleted"
    finally:
        release_lease(connection_id)
