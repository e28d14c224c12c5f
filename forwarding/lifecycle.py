"""A connection's life cycle: connect (queueing the whole membership), pause, resume, test, delete, end.

Here in forwarding, not in connections/, because each step touches the outbox or the lease: connecting
backfills the outbox, resuming makes it due, deleting empties it and ends the connection under its lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.membership.deferred import ring_deferred_evaluations_after_commit
from audiences.membership.locks import lock_audience_membership
from audiences.models import Audience
from connections.models import Connection, ConnectionMember
from connections.selectors import MAY_BE_HELD
from connections.status import PAUSABLE
from connections.validation import check_connectable, clean_connection_settings
from forwarding import alerts, planner, recovery
from forwarding.backoff import backoff_seconds
from forwarding.delivery import attempt_error
from forwarding.doorbell import ring_after_commit, ring_end, ring_end_after_commit
from forwarding.leases import acquire_lease, hold_lease
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.partner_calls import audience_ref, held_removals
from outputs.models import Output
from outputs.partners.http import PartnerError

logger = logging.getLogger(__name__)
END_BATCH = 500


def connection_create(*, audience: Audience, output: Output, settings: Mapping[str, Any]) -> Connection:
    """Connect an audience to an output; its whole current membership is queued for sending."""
    cleaned = clean_connection_settings(output=output, settings=settings)
    with transaction.atomic():
        # Membership changes read the audience's connections before they commit, so a change
        # committed after the backfill's snapshot by a transaction that read the connections before
        # this one commits would reach neither the backfill nor the outbox. Real-time evaluation holds
        # the audience's membership lock shared, a recompute exclusively: taken exclusively here, it
        # waits for those running and holds back those to come until this commits, so each change is
        # in the backfill or planned for the new connection. Taken before the audience row, in the
        # order a recompute takes them (no deadlock between the two).
        lock_audience_membership(audience.pk)
        # Events API requests meanwhile leave the audience out rather than wait: evaluated after commit.
        ring_deferred_evaluations_after_commit(only_if_waiting=True)
        # Locked and read afresh, so an audience archived meanwhile is not connected. FOR NO KEY
        # UPDATE: membership rows written meanwhile check their audience with KEY SHARE, which it lets by.
        audience = Audience.objects.select_for_update(no_key=True).get(pk=audience.pk)
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
    the caller loaded it): an ending connection is never revived. The admins are alerted of a
    recovery (forwarding/alerts.py), in the same transaction."""
    if alerts.change_status(connection.pk, status, reason=reason) is None:
        raise ValidationError({"status": ["This connection is being deleted."]})
    connection.refresh_from_db()
    return connection


def connection_pause(*, connection: Connection) -> Connection:
    """Stop sending; changes are still planned and sent on resume. Only a sending connection pauses
    (connections/status.py): a faulted one sends nothing already, and pausing it would hide its fault,
    so it is refused here, for the admin and the REST API alike. Pausing a paused one changes nothing."""
    paused = alerts.change_status(
        connection.pk, Connection.Status.PAUSED, reason="Paused by a user.", only_from=PAUSABLE
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
    """Send again: clears a fault and the connection's backoff, makes every pending change due now,
    and rings delivery."""
    connection = _set_status(connection, Connection.Status.SENDING)
    recovery.clear_backoff(connection.pk)
    ring_after_commit(connection.pk)
    connection.refresh_from_db()
    return connection


def connection_resume_if_test_passes(*, connection: Connection) -> Connection:
    """Resume after a fix (a new API key, a list created again), only once the partner's credentials
    test passes; otherwise nothing changes and the test's answer is the error."""
    ok, message = connection_test(connection=connection)
    if not ok:
        raise ValidationError({"status": [f"The connection test failed, so it was not resumed: {message}"]})
    return connection_resume(connection=connection)


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
        # The outbox first, then the connection row: the order delivery locks them in (it deletes
        # delivered changes, then stamps the connection), so the two cannot deadlock.
        PendingChange.objects.filter(connection=connection).delete()
        connection = _set_status(connection, Connection.Status.ENDING, "Deleting: removing delivered members.")
        # The clean-up's own failures count from zero (a 429's wait, if any, still holds).
        Connection.objects.filter(pk=connection.pk).update(failures=0, failing_since=None, fault_cause="")
        ring_end_after_commit(connection.pk)
    return connection


def connection_end(*, connection_id: int, task_id: str = "") -> str:
    """Finish ending a connection: clean up at the partner in batches, then delete the row.
    Returns what happened. A failed clean-up call is recorded on the connection (its reason, a
    DeliveryAttempt) and the connection backs off as a whole, exponentially up to
    FORWARDING_BACKOFF_MAX_SECONDS (a refused key is not re-tried every few seconds forever);
    the sweeper rings it again when its wait is over. Fixing the output's key lets it finish.
    `task_id`: the Celery task doing it, recorded on each clean-up attempt."""
    lease = acquire_lease(connection_id, statuses=(Connection.Status.ENDING,))
    if lease is None:
        return "busy, throttled or gone"
    with hold_lease(lease):
        connection = Connection.objects.select_related("output", "audience").get(pk=connection_id)
        partner = connection.output.partner()
        if partner.wants_cleanup_on_end():
            while True:
                # Members whose add's answer never came may be held too: they are cleaned up as well.
                held = list(
                    ConnectionMember.objects.filter(connection=connection, state__in=MAY_BE_HELD).order_by("id")[
                        :END_BATCH
                    ]
                )
                if not held:
                    break
                changes = held_removals(partner, [(m.identity_type, m.value) for m in held])
                now = timezone.now()
                started = time.monotonic()
                try:
                    partner.end_connection(connection.settings, audience_ref(connection.audience), changes)
                except PartnerError as exc:
                    if lease.lost.is_set():
                        return "lease lost"
                    return _cleanup_failed(
                        connection, len(changes), exc, int((time.monotonic() - started) * 1000), task_id
                    )
                ConnectionMember.objects.filter(pk__in=[m.pk for m in held]).update(
                    state=ConnectionMember.State.REMOVED, updated_at=now
                )
                DeliveryAttempt.objects.create(
                    connection=connection,
                    kind="cleanup",
                    at=now,
                    duration_ms=int((time.monotonic() - started) * 1000),
                    http_status=partner.last_http_status(),
                    task_id=task_id,
                    sent=len(changes),
                    delivered=len(changes),
                    result="ok",
                )
        connection.delete()
        return "deleted"


def _cleanup_failed(connection: Connection, sent: int, error: PartnerError, duration_ms: int, task_id: str) -> str:
    now = timezone.now()
    failures = connection.failures + 1
    delay = backoff_seconds(failures, getattr(error, "retry_after", None))
    result = recovery.attempt_result(error)
    DeliveryAttempt.objects.create(
        connection=connection,
        kind="cleanup",
        at=now,
        duration_ms=duration_ms,
        http_status=error.status,
        error_code=error.code,
        task_id=task_id,
        sent=sent,
        result=result,
        error=attempt_error(error.message),
    )
    Connection.objects.filter(pk=connection.pk).update(
        failures=failures,
        failing_since=connection.failing_since or now,
        throttled_until=now + timedelta(seconds=delay),
        status_reason=(
            f"Deleting: the partner refused the clean-up ({error.message}); attempt {failures}, "
            f"next one in {delay:.0f} s."
        )[:2000],
    )
    logger.warning("cleanup of connection %s failed (attempt %s): %s", connection.pk, failures, error.message)
    ring_end(connection.pk, countdown=delay)
    return f"retrying in {delay:.0f} s: {error.message}"
