"""Delivery: drain a connection's outbox to its partner, batch by batch, recording every outcome.

One worker at a time holds a connection's lease (forwarding/leases.py), which keeps the partner
seeing each identity's changes in order. A batch
is sent, then in one transaction each identity's outcome is recorded and its pending change is
deleted, unless a newer word arrived meanwhile (the version guard).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audiences.models import Profile
from connections.models import Connection, ConnectionMember
from connections.selectors import held_identities
from connections.status import delivers
from forwarding.backoff import backoff_seconds
from forwarding.doorbell import ring
from forwarding.leases import acquire_lease, release_lease, renew_lease
from forwarding.metrics import record_delivery_attempt
from forwarding.models import DeliveryAttempt, PendingChange
from outputs.partners.base import Action, MemberChange, MemberResult, Outcome
from outputs.partners.http import AuthError, PartnerError, PermanentError, TransientError

logger = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    batches: int = 0
    delivered: int = 0
    rejected: int = 0
    retried: int = 0
    skipped: int = 0  # removals of identities the partner never held: nothing to send
    stopped: str = ""  # why delivery stopped early, if it did
    errors: list[str] = field(default_factory=list)


def has_due_work(connection_id: int) -> bool:
    return PendingChange.objects.filter(connection_id=connection_id, next_attempt_at__lte=timezone.now()).exists()


# --- faults ----------------------------------------------------------------------------------


def fault_connection(connection_id: int, reason: str) -> None:
    Connection.objects.filter(pk=connection_id).exclude(status=Connection.Status.ENDING).update(
        status=Connection.Status.FAULTED, status_reason=reason[:2000], status_changed_at=timezone.now()
    )
    logger.warning("connection %s faulted: %s", connection_id, reason)


# --- delivery --------------------------------------------------------------------------------


def deliver_connection(*, connection_id: int) -> DeliveryReport:
    """Drain the connection's due pending changes. Safe to call any number of times at once."""
    report = DeliveryReport()
    while True:
        if not acquire_lease(connection_id):
            return report  # someone else is delivering it, or it is not sending
        try:
            _drain(connection_id, report)
        finally:
            release_lease(connection_id)
        # A change planned after our last look but before the release found the lease taken
        # and went away: look once more before leaving.
        if report.stopped or not has_due_work(connection_id):
            return report


def _drain(connection_id: int, report: DeliveryReport) -> None:
    partner = None
    while True:
        connection = Connection.objects.select_related("output").get(pk=connection_id)
        if not delivers(connection.status):
            report.stopped = f"connection is {connection.status}"
            return
        # One partner (and so one keep-alive HTTP session) for the whole drain.
        partner = partner or connection.output.partner()
        batch = list(
            PendingChange.objects.filter(connection_id=connection_id, next_attempt_at__lte=timezone.now()).order_by(
                "id"
            )[: partner.batch_limit]
        )
        if not batch:
            return
        report.batches += 1
        if not _send_batch(connection, partner, batch, report):
            return
        renew_lease(connection_id)


def _send_batch(connection: Connection, partner, batch: list[PendingChange], report: DeliveryReport) -> bool:
    """Send one batch and record it. Returns False when delivery must stop (fault or backoff)."""
    held = held_identities(connection.pk, {(p.identity_type, p.value) for p in batch})
    skipped = [p for p in batch if p.action == PendingChange.Action.REMOVE and (p.identity_type, p.value) not in held]
    to_send = [p for p in batch if p not in skipped]
    attributes = dict(
        Profile.objects.filter(pk__in={p.profile_id for p in to_send if p.profile_id}).values_list("pk", "attributes")
    )
    changes = {
        p.pk: MemberChange(
            identity_type=p.identity_type,
            value=p.value,
            action=Action(p.action),
            attributes=attributes.get(p.profile_id, {}) if p.action == PendingChange.Action.ADD else {},
        )
        for p in to_send
    }
    started = time.monotonic()
    results: list[MemberResult] = []
    error: PartnerError | None = None
    if to_send:
        try:
            results = partner.apply_batch(connection.settings, list(changes.values()))
        except PartnerError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected answer: keep the work, retry later
            logger.exception("delivery to connection %s failed unexpectedly", connection.pk)
            error = TransientError(f"unexpected error: {exc.__class__.__name__}: {exc}")
    duration_ms = int((time.monotonic() - started) * 1000)
    if error is not None:
        return _record_failure(connection, batch, error, duration_ms, report)
    _record_results(connection, batch, changes, results, skipped, held, duration_ms, report)
    return True


def _record_results(connection, batch, changes, results, skipped, held, duration_ms, report) -> None:
    now = timezone.now()
    by_key = {(r.change.identity_type, r.change.value): r for r in results}
    done: list[PendingChange] = list(skipped)
    retry: list[tuple[PendingChange, str]] = []
    members: list[ConnectionMember] = []
    delivered = rejected = 0
    for pending in batch:
        if pending in skipped:
            continue
        result = by_key.get((pending.identity_type, pending.value))
        if result is None or result.outcome is Outcome.RETRY:
            retry.append((pending, result.reason if result else "the partner gave no answer for this member"))
            continue
        done.append(pending)
        if result.outcome is Outcome.DELIVERED:
            delivered += 1
            state = ConnectionMember.State.ADDED if pending.action == "add" else ConnectionMember.State.REMOVED
        else:
            rejected += 1
            # A refused update of a member the partner already holds leaves it held there,
            # so its removal must still be sent later.
            held_already = (pending.identity_type, pending.value) in held and pending.action == "add"
            state = ConnectionMember.State.ADDED if held_already else ConnectionMember.State.REJECTED
        members.append(
            ConnectionMember(
                connection_id=connection.pk,
                identity_type=pending.identity_type,
                value=pending.value,
                state=state,
                reason=result.reason,
                updated_at=now,
            )
        )
    with transaction.atomic():
        if members:
            ConnectionMember.objects.bulk_create(
                members,
                update_conflicts=True,
                unique_fields=["connection", "identity_type", "value"],
                update_fields=["state", "reason", "updated_at"],
            )
        _delete_if_unchanged(done)
        delays = []
        for pending, reason in retry:
            delays.append(backoff_seconds(pending.attempts + 1))
            PendingChange.objects.filter(pk=pending.pk).update(
                attempts=F("attempts") + 1,
                next_attempt_at=now + timedelta(seconds=delays[-1]),
                last_error=reason[:2000],
            )
        Connection.objects.filter(pk=connection.pk).update(last_delivered_at=now)
        if changes:
            DeliveryAttempt.objects.create(
                connection_id=connection.pk,
                at=now,
                duration_ms=duration_ms,
                sent=len(changes),
                delivered=delivered,
                rejected=rejected,
                retried=len(retry),
                result=DeliveryAttempt.Result.OK if not (rejected or retry) else DeliveryAttempt.Result.PARTIAL,
            )
    if changes:
        record_delivery_attempt(
            partner=connection.output.partner_key,
            result="partial" if rejected or retry else "ok",
            duration_seconds=duration_ms / 1000,
            delivered=delivered,
            rejected=rejected,
            retried=len(retry),
            planned_at=[p.created_at for p in done if p not in skipped],
            acknowledged_at=now,
        )
    report.delivered += delivered
    report.rejected += rejected
    report.retried += len(retry)
    report.skipped += len(skipped)
    if retry:
        _ring_later(connection.pk, min(delays))


def _delete_if_unchanged(done: list[PendingChange]) -> None:
    """Delete delivered pending changes, except those a newer word replaced while we sent."""
    if not done:
        return
    sent_versions = {p.pk: p.version for p in done}
    # Locked, so a newer word cannot slip in between reading the versions and deleting.
    current = PendingChange.objects.select_for_update().filter(pk__in=sent_versions).values_list("pk", "version")
    unchanged = [pk for pk, version in current if sent_versions[pk] == version]
    PendingChange.objects.filter(pk__in=unchanged).delete()


def _record_failure(connection, batch, error: PartnerError, duration_ms: int, report: DeliveryReport) -> bool:
    now = timezone.now()
    max_attempts = settings.FORWARDING["MAX_ATTEMPTS"]
    attempts = max(p.attempts for p in batch) + 1
    if isinstance(error, TransientError):
        result = DeliveryAttempt.Result.TRANSIENT
    elif isinstance(error, AuthError):
        result = DeliveryAttempt.Result.AUTH
    else:
        result = DeliveryAttempt.Result.PERMANENT
    delay = backoff_seconds(attempts, getattr(error, "retry_after", None))
    with transaction.atomic():
        ids = [p.pk for p in batch]
        if isinstance(error, TransientError):
            PendingChange.objects.filter(pk__in=ids).update(
                attempts=F("attempts") + 1,
                next_attempt_at=now + timedelta(seconds=delay),
                last_error=error.message[:2000],
            )
        else:
            # The work stays due: Resume sends it again once someone fixed the cause.
            PendingChange.objects.filter(pk__in=ids).update(attempts=F("attempts") + 1, last_error=error.message[:2000])
        DeliveryAttempt.objects.create(
            connection_id=connection.pk,
            at=now,
            duration_ms=duration_ms,
            sent=len(batch),
            result=result,
            error=error.message[:2000],
        )
        if isinstance(error, AuthError | PermanentError):
            fault_connection(
                connection.pk, f"{connection.output.partner_class.name} refused the request: {error.message}"
            )
        elif attempts >= max_attempts:
            fault_connection(
                connection.pk, f"Gave up after {attempts} attempts; last error: {error.message}. Resume to try again."
            )
    record_delivery_attempt(
        partner=connection.output.partner_key, result=result, duration_seconds=duration_ms / 1000, error_class=result
    )
    report.errors.append(error.message)
    report.stopped = result
    if isinstance(error, TransientError) and attempts < max_attempts:
        _ring_later(connection.pk, delay)
    return False


def _ring_later(connection_id: int, delay: float) -> None:
    """Schedule a retry the broker can hold; a longer wait is left to the sweeper, because a
    countdown beyond the broker's visibility timeout would be delivered twice."""
    limit = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600) / 2
    if delay <= limit:
        ring(connection_id, countdown=delay)
