"""Delivery: drain a connection's outbox to its partner, batch by batch, recording every outcome.

One worker at a time holds a connection's lease (forwarding/leases.py), which keeps the partner
seeing each identity's changes in order. A batch
is sent, then in one transaction each identity's outcome is recorded and its pending change is
deleted, unless a newer word arrived meanwhile (the version guard).

Write-ahead: before a batch goes out, its adds are committed as "maybe held" (ConnectionMember), so an
add whose answer never comes (a read timeout, a worker killed mid-call, the database lost after the
call) still counts as possibly held, and the member's removal is sent later. A removal is skipped only
for an identity the partner cannot hold: never sent, removed, or refused. An add is skipped only when the
partner acknowledged the very same add (ConnectionMember.fingerprint), and nothing was sent since.

Pipelined: while the partner answers a batch (in the drain's caller thread), the next one is claimed; once
it has answered, the next one goes out and the answered one is recorded while the partner works. The calls
stay one at a time and in order; a batch whose call failed stops the drain before the next one is sent.

A whole call failing backs the connection off as a whole, and probes (forwarding/recovery.py). A
worker told to shut down finishes the batch in hand and leaves (forwarding/shutdown.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime

from django.conf import settings
from django.db import InterfaceError, OperationalError, transaction
from django.db import connections as db_connections
from django.db.models import F
from django.utils import timezone

from connections.models import Connection, ConnectionMember
from connections.status import delivers
from forwarding import batches, recovery
from forwarding.accounts import AccountSlot
from forwarding.backoff import backoff_seconds
from forwarding.batches import Claimed
from forwarding.doorbell import ring
from forwarding.leases import Lease, acquire_lease, hold_lease, release_lease
from forwarding.metrics import record_delivery_attempt
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.partner_calls import apply_changes, change_fingerprint
from forwarding.shutdown import shutdown_requested
from outputs.partners.base import Action, MemberChange, MemberResult, Outcome
from outputs.partners.http import AuthError, BudgetRefused, PartnerError, PermanentError, TransientError

logger = logging.getLogger(__name__)

MEMBER_TABLE = ConnectionMember._meta.db_table
ADD, REMOVE = PendingChange.Action.ADD.value, PendingChange.Action.REMOVE.value
ADDED, REMOVED, REJECTED = (
    ConnectionMember.State.ADDED.value,
    ConnectionMember.State.REMOVED.value,
    ConnectionMember.State.REJECTED.value,
)


@dataclass
class DeliveryReport:
    batches: int = 0
    delivered: int = 0
    rejected: int = 0
    retried: int = 0
    skipped: int = 0  # removals of identities the partner never held, adds it holds as they are: nothing to send
    stopped: str = ""  # why delivery stopped early, if it did
    errors: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PartnerCall:
    """What a delivery attempt records of one partner call besides its outcome."""

    duration_ms: int
    http_status: int | None  # None: no answer came
    task_id: str


# Email addresses in a partner's error text are masked before it is kept on the attempt (personal data).
EMAIL = re.compile(r"[^\s@<>()\[\]\"',;:]+@[^\s@<>()\[\]\"',;:]+")


def attempt_error(message: str) -> str:
    """The partner's error text as an attempt keeps it: email addresses masked, at most 2,000 characters."""
    return EMAIL.sub("[email]", message)[:2000]


def has_due_work(connection_id: int) -> bool:
    return PendingChange.objects.filter(connection_id=connection_id, next_attempt_at__lte=timezone.now()).exists()


SHUTTING_DOWN = "the worker is shutting down"
LEASE_LOST = "the lease was lost"
ACCOUNT_FULL = "the partner account's deliveries are at their cap"
BUDGET_USED_UP = "the partner account's request budget is used up"


# --- delivery --------------------------------------------------------------------------------


def deliver_connection(
    *, connection_id: int, task_id: str = "", on_lease: Callable[[Lease], object] | None = None
) -> DeliveryReport:
    """Drain the connection's due pending changes. Safe to call any number of times at once.
    `task_id`: the Celery task doing it, recorded on each delivery attempt. `on_lease`: called with each
    lease taken, before anything is sent under it (a bulk upload records itself then, forwarding/bulk.py)."""
    report = DeliveryReport()
    while True:
        lease = acquire_lease(connection_id)
        if lease is None:
            return report  # someone else is delivering it, it is not sending, or it is throttled
        # Read once here for the account's slot and the drain's first batch (each batch reads it again).
        first = Connection.objects.select_related("output", "audience").get(pk=connection_id)
        slot = AccountSlot(first.output, lease.holder)
        if not slot.take():
            release_lease(lease)
            report.stopped = ACCOUNT_FULL
            ring(connection_id, countdown=1)
            return report
        try:
            with hold_lease(lease, also_renew=slot.take):
                if on_lease is not None:
                    on_lease(lease)
                    first = None  # what it recorded may have changed the row: read it again
                _drain(connection_id, report, lease, task_id, first)
        finally:
            slot.release()
        if report.stopped == SHUTTING_DOWN:
            ring(connection_id)  # for the next worker, now that the lease is free
        # A change planned after our last look but before the release found the lease taken
        # and went away: look once more before leaving.
        if report.stopped or not has_due_work(connection_id):
            return report


def _drain(
    connection_id: int, report: DeliveryReport, lease: Lease, task_id: str, first: Connection | None = None
) -> None:
    # One partner call in flight at a time, in a thread of its own: while the partner works on a batch, the drain
    # claims the next one (the database's share of a batch and the partner's overlap instead of adding up).
    # The calls themselves stay strictly one after the other, in claim order.
    # A batch claimed ahead and not sent when the drain stops has its write-ahead undone (release_unsent).
    ahead = ClaimedAhead()
    try:
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"partner-call-{connection_id}") as caller:
            _drain_batches(connection_id, report, lease, task_id, caller, ahead, first)
    finally:
        # Not once the lease is lost: another worker may have claimed the same changes, its marks now.
        if ahead.batch and not lease.lost.is_set():
            try:
                batches.release_unsent(connection_id, ahead.batch)
            except Exception:  # the database went away: the marks stay, as after a crash (removals sent)
                logger.exception("could not undo the write-ahead of an unsent batch of connection %s", connection_id)


@dataclass
class ClaimedAhead:
    """The next batch, claimed while the last one was sent (None: none claimed ahead)."""

    batch: list[Claimed] | None = None


def _drain_batches(
    connection_id: int,
    report: DeliveryReport,
    lease: Lease,
    task_id: str,
    caller: ThreadPoolExecutor,
    ahead: ClaimedAhead,
    first: Connection | None = None,
) -> None:
    partner = None
    # Keyset: each claim starts after the last id claimed. Rows left behind (a newer word that replaced a
    # change while it was sent, a change committed late with a lower id, a retry now due) are found by the
    # next drain, from the start: deliver_connection drains again while due work is left.
    keyset = Keyset()
    sending: InFlight | None = None  # the batch on the wire, sent before the last one's record
    while True:
        if sending is None:
            connection, why_not = _sendable(connection_id, first)
            first = None
            if connection is None:
                report.stopped = why_not
                return
            # One partner (and so one keep-alive HTTP session) for the whole drain.
            if partner is None:
                partner = connection.output.partner()
            keyset.refresh_statistics(report)
            # Claimed with its adds written ahead as "maybe held" (committed before the call goes out).
            batch = ahead.batch
            if batch is None:
                batch = _claim(connection_id, _size(connection, partner), keyset.after)
            ahead.batch = None
            if not batch:
                return
            sending = _send(connection, partner, batch, keyset, report, caller, task_id)
        current, sending = sending, None
        connection = current.connection
        size = _size(connection, partner)
        if len(current.prepared.batch) == size and not connection.failures and not shutdown_requested():
            # Not while probing: one small batch at a time.
            keyset.refresh_statistics(report)
            ahead.batch = _claim_ahead(connection_id, size, keyset.after)
        next_connection = _sendable(connection_id)[0] if ahead.batch else None  # read while the partner works
        outcome = current.call.result()
        if lease.lost.is_set():
            report.stopped = LEASE_LOST  # another worker may hold it now: record nothing
            return
        if outcome.error is not None:
            _finish_batch(connection, partner, current.prepared, outcome, report, lease)
            return
        # The partner answered this batch: the next one goes out now, and this one is recorded while the
        # partner works on it (the two batches hold different identities: the outbox has one row per
        # identity, and the keyset never claims a row twice in a drain). Not once a stop is due.
        if ahead.batch and next_connection is not None and not shutdown_requested():
            sending = _send(next_connection, partner, ahead.batch, keyset, report, caller, task_id)
            ahead.batch = None
        _record_answered(connection, partner, current.prepared, outcome, report, lease, on_the_wire=sending)
        if connection.failures:
            recovery.call_succeeded(connection_id)  # the probe went through: full batches again
        if sending is None and len(current.prepared.batch) < size:
            # The claim found fewer than it asked for: nothing more was due. No empty claim to make sure (six
            # statements a ring): deliver_connection looks once more after letting go of the lease anyway.
            return


@dataclass
class Keyset:
    """Where the drain's claims stand: the last id claimed, and the member rows written since the tables'
    statistics were last refreshed."""

    after: int = 0
    written: int = 0

    def claimed(self, batch: list[Claimed]) -> None:
        self.after = batch[-1].id
        self.written += 2 * len(batch)  # each member written ahead, then its answer

    def refresh_statistics(self, report: DeliveryReport) -> None:
        if batches.statistics_due(report.batches):
            # A long drain grows the members table, from "empty" for a new connection.
            if MEMBER_TABLE in batches.refresh_statistics(self.written):
                self.written = 0


@dataclass
class InFlight:
    """A batch whose partner call is under way in the caller thread."""

    connection: Connection
    prepared: PreparedBatch
    call: Future


def _sendable(connection_id: int, read: Connection | None = None) -> tuple[Connection | None, str]:
    """The connection, read afresh (or just `read`), if a batch may go out to it now; else None and why not."""
    if shutdown_requested():
        return None, SHUTTING_DOWN  # the batches in hand are done: leave the rest
    connection = read or Connection.objects.select_related("output", "audience").get(pk=connection_id)
    if not delivers(connection.status):
        return None, f"connection is {connection.status}"
    if connection.throttled_until and connection.throttled_until > timezone.now():
        return None, "throttled"  # e.g. a 429 to another connection of the partner account
    return connection, ""


def _size(connection: Connection, partner) -> int:
    return recovery.batch_size(connection, partner.batch_limit)


def _send(
    connection: Connection,
    partner,
    batch: list[Claimed],
    keyset: Keyset,
    report: DeliveryReport,
    caller: ThreadPoolExecutor,
    task_id: str,
) -> InFlight:
    keyset.claimed(batch)
    report.batches += 1
    prepared = _prepare_batch(connection, batch)
    return InFlight(connection, prepared, caller.submit(_call_partner, partner, connection, prepared.changes, task_id))


def _record_answered(
    connection: Connection,
    partner,
    prepared: PreparedBatch,
    outcome: CallOutcome,
    report: DeliveryReport,
    lease: Lease,
    *,
    on_the_wire: InFlight | None,
) -> None:
    """Record a batch the partner answered. Should the database connection break while the next batch is on
    the wire, the record is tried once more on a new connection: this answer lost, its changes would be sent
    again (and the next batch's, the drain stopping with it)."""
    try:
        _finish_batch(connection, partner, prepared, outcome, report, lease)
    except (OperationalError, InterfaceError):
        if on_the_wire is None:
            raise
        logger.warning("connection %s: the database connection broke while recording a batch", connection.pk)
        db_connections["default"].close()
        _finish_batch(connection, partner, prepared, outcome, report, lease)


def _claim(connection_id: int, size: int, after: int) -> list[Claimed]:
    return batches.claim(connection_id, size, timezone.now(), after=after, write_ahead=True)


def _claim_ahead(connection_id: int, size: int, after: int) -> list[Claimed] | None:
    """The next batch, claimed while the current one is on the wire. Should the database connection break
    here (a restart, a terminated backend), the batch on the wire must still have its answer recorded: lost,
    it would be sent again once its changes came due. So the broken connection is dropped (the record opens
    a new one) and nothing is claimed ahead (the claim's transaction rolled back with the connection)."""
    try:
        return _claim(connection_id, size, after)
    except (OperationalError, InterfaceError):
        logger.warning("connection %s: the database connection broke while claiming ahead", connection_id)
        db_connections["default"].close()
        return None


@dataclass
class PreparedBatch:
    """A claimed batch split into what goes to the partner and what needs no call."""

    batch: list[Claimed]
    to_send: list[Claimed]
    changes: list[MemberChange]  # one per change in to_send, in its order
    skipped: list[Claimed]


@dataclass
class CallOutcome:
    results: list[MemberResult]
    error: PartnerError | None
    call: PartnerCall


def _prepare_batch(connection: Connection, batch: list[Claimed]) -> PreparedBatch:
    skipped: list[Claimed] = []
    to_send: list[Claimed] = []
    changes: list[MemberChange] = []
    for p in batch:
        change = MemberChange(
            identity_type=p.identity_type,
            value=p.value,
            action=Action(p.action),
            attributes=p.attributes if p.action == ADD else {},
            profile_id=p.profile_id,
        )
        # A removal is skipped only for an identity the partner cannot hold: never sent, removed or refused;
        # an add only when the partner acknowledged the very same add (a member who left and re-entered
        # before the removal went out: the outbox kept only the last word).
        if (p.action == REMOVE and p.held is None) or (p.acknowledged and p.acknowledged == change_fingerprint(change)):
            skipped.append(p)
        else:
            to_send.append(p)
            changes.append(change)
    # The claim wrote ahead every add but those it could not tell from a skipped one: the updates of members
    # acknowledged with a fingerprint (blank from now until their answer is recorded).
    batches.write_ahead_adds(connection.pk, [p for p in to_send if p.acknowledged], timezone.now())
    return PreparedBatch(batch, to_send, changes, skipped)


def _call_partner(partner, connection: Connection, changes: list[MemberChange], task_id: str) -> CallOutcome:
    """The partner call of one batch (in the drain's caller thread: no database work here)."""
    started = time.monotonic()
    results: list[MemberResult] = []
    error: PartnerError | None = None
    if changes:
        try:
            # Grouped per identity or per profile, as the partner's pattern wants (forwarding/partner_calls.py).
            results = apply_changes(partner, connection, changes)
        except PartnerError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected answer: keep the work, retry later
            logger.exception("delivery to connection %s failed unexpectedly", connection.pk)
            error = TransientError(f"unexpected error: {exc.__class__.__name__}: {exc}")
        finally:
            db_connections.close_all()  # this thread's own, should a partner ever have opened one
    call = PartnerCall(
        duration_ms=int((time.monotonic() - started) * 1000),
        http_status=error.status if error is not None else (partner.last_http_status() if changes else None),
        task_id=task_id,
    )
    return CallOutcome(results, error, call)


def _finish_batch(
    connection: Connection,
    partner,
    prepared: PreparedBatch,
    outcome: CallOutcome,
    report: DeliveryReport,
    lease: Lease | None,
) -> bool:
    """Record one batch's outcome. Returns False when delivery must stop (fault or backoff)."""
    if lease is not None and lease.lost.is_set():
        report.stopped = LEASE_LOST  # another worker may hold it now: record nothing
        return False
    if outcome.error is not None:
        return _record_failure(connection, prepared.batch, outcome.error, outcome.call, report)
    _record_results(
        connection, prepared.to_send, prepared.changes, outcome.results, prepared.skipped, outcome.call, report
    )
    return True


def _record_results(
    connection: Connection,
    sent: list[Claimed],
    changes: list[MemberChange],
    results: list[MemberResult],
    skipped: list[Claimed],
    call: PartnerCall,
    report: DeliveryReport,
) -> None:
    now = timezone.now()
    by_key = {(r.change.identity_type, r.change.value): r for r in results}
    sent_changes = {(c.identity_type, c.value): c for c in changes}
    settled = [(p.id, p.version) for p in skipped]
    acknowledged: list[datetime] = []  # when each change the partner answered entered the outbox
    retry: list[tuple[int, float, str]] = []
    members: list[tuple[str, str, str, str, str]] = []
    delivered = rejected = 0
    for pending in sent:
        result = by_key.get(pending.key)
        if result is None or result.outcome is Outcome.RETRY:
            reason = result.reason if result else "the partner gave no answer for this member"
            retry.append((pending.id, backoff_seconds(pending.attempts + 1), reason[:2000]))
            continue
        settled.append((pending.id, pending.version))
        acknowledged.append(pending.created_at)
        fingerprint = ""  # a removal, or a refused update: the partner keeps what it held, no longer known
        if result.outcome is Outcome.DELIVERED:
            delivered += 1
            state = ADDED if pending.action == ADD else REMOVED
            if pending.action == ADD:
                fingerprint = change_fingerprint(sent_changes[pending.key])
        else:
            rejected += 1
            # A refused update of a member the partner holds (or may hold, from an add whose answer
            # never came) leaves it as it was there, so its removal must still be sent later.
            state = pending.held if pending.action == ADD and pending.held else REJECTED
        members.append((pending.identity_type, pending.value, state, result.reason, fingerprint))
    batches.record(
        batches.BatchRecord(
            connection_id=connection.pk,
            now=now,
            members=members,
            settled=settled,
            retried=retry,
            sent=len(sent),
            delivered=delivered,
            rejected=rejected,
            duration_ms=call.duration_ms,
            http_status=call.http_status,
            task_id=call.task_id,
        )
    )
    if sent:
        record_delivery_attempt(
            partner=connection.output.partner_key,
            result="partial" if rejected or retry else "ok",
            duration_seconds=call.duration_ms / 1000,
            delivered=delivered,
            rejected=rejected,
            retried=len(retry),
            planned_at=acknowledged,
            acknowledged_at=now,
        )
    report.delivered += delivered
    report.rejected += rejected
    report.retried += len(retry)
    report.skipped += len(skipped)
    if retry:
        _ring_later(connection.pk, min(delay for _, delay, _ in retry))


def _record_failure(
    connection, batch: list[Claimed], error: PartnerError, call: PartnerCall, report: DeliveryReport
) -> bool:
    if isinstance(error, BudgetRefused):
        # We chose not to call: no attempt to record, no failure of the partner to count (recovery.call_deferred).
        report.stopped = BUDGET_USED_UP
        _ring_later(connection.pk, recovery.call_deferred(connection, error))
        return False
    now = timezone.now()
    result = recovery.attempt_result(error)
    with transaction.atomic():
        # The work stays due: the connection as a whole waits (a transient error, see
        # forwarding/recovery.py), or Resume sends it again once someone fixed the cause.
        PendingChange.objects.filter(pk__in=[p.id for p in batch]).update(
            attempts=F("attempts") + 1, last_error=error.message[:2000]
        )
        DeliveryAttempt.objects.create(
            connection_id=connection.pk,
            at=now,
            duration_ms=call.duration_ms,
            http_status=call.http_status,
            error_code=error.code,
            task_id=call.task_id,
            sent=len(batch),
            result=result,
            error=attempt_error(error.message),
        )
        if isinstance(error, AuthError | PermanentError):
            recovery.fault(
                connection.pk,
                Connection.FaultCause.REFUSED,
                f"{connection.output.partner_class.name} refused the request: {error.message}",
            )
    record_delivery_attempt(
        partner=connection.output.partner_key,
        result=result,
        duration_seconds=call.duration_ms / 1000,
        error_class=result,
    )
    report.errors.append(error.message)
    report.stopped = result
    if isinstance(error, TransientError):
        _ring_later(connection.pk, recovery.call_failed(connection, error))
    return False


def _ring_later(connection_id: int, delay: float) -> None:
    """Schedule a retry the broker can hold; a longer wait is left to the sweeper, because a
    countdown beyond the broker's visibility timeout would be delivered twice."""
    limit = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", 3600) / 2
    if delay <= limit:
        ring(connection_id, countdown=delay)
