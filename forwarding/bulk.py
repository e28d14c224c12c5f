"""Bulk uploads: the home of connections whose partner declares Capability.BULK.

Their changes are planned into the outbox like any other (coalesced per identity: the last word wins, so an
identity added then removed between two uploads sends nothing), but no doorbell rings for them and the
sweeper leaves them alone. An upload is due on the connection's upload criteria (its own
`upload_wait_minutes` / `upload_messages`, else its partner's default_upload_criteria: wait N minutes since
the oldest change waiting, or M changes waiting, whichever comes first), and is queued by:

* time: beat runs flush_due_uploads() every FORWARDING_BULK_CHECK_INTERVAL seconds, which queues an upload
  for every due connection (a lost upload task is found again by the next check: the backlog is still due),
  and resumes an upload whose worker died (once its lease has expired) whatever the criteria;
* count: the planner calls note_planned() for the bulk connections it wrote rows for, and once the
  transaction commits, the upload is queued as soon as M changes wait (a headroom kept in Redis spares
  most transactions the count of the outbox);
* a person: upload_now() (the admin's "Upload now", POST /api/v1/connections/{id}/upload-now/).

upload_connection() sends the coalesced outbox (less the adds identical to what the partner holds already: a
member removed then re-added between two uploads, its attributes unchanged, sends nothing) through the same
path as real-time delivery (forwarding/delivery.py: the connection's lease, batches of the partner's request
size, write-ahead, every outcome recorded, transient errors backed off), and records the upload
(forwarding.models.Upload) when it holds the lease. A worker killed mid-upload loses nothing: its lease
expires, the rows it had not recorded are still in the outbox (its adds written ahead as "maybe held"), and
the next upload sends only those.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

import redis
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection as db
from django.db import transaction
from django.db.models import Count, Min, OuterRef, Subquery, Sum
from django.utils import timezone

from audiences.models import Profile
from config import queueing
from config.api_errors import ConflictError
from connections.models import Connection, ConnectionMember
from connections.status import delivers
from connections.validation import clean_upload_criteria
from forwarding.delivery import DeliveryReport, deliver_connection
from forwarding.leases import Lease, free_of_lease, not_throttled
from forwarding.models import DeliveryAttempt, PendingChange, Upload
from forwarding.partner_calls import change_fingerprint
from outputs.partners.base import Action, Capability, MemberChange, UploadCriteria
from outputs.partners.registry import partner_keys_with

logger = logging.getLogger(__name__)
UPLOAD_TASK = "forwarding.tasks.upload_connection"
Trigger = Upload.Trigger


@dataclass(frozen=True)
class Backlog:
    """A bulk connection's outbox as the upload criteria see it: the changes due now, and since when."""

    waiting: int = 0
    oldest: datetime | None = None


class UploadRefused(ConflictError):
    """Upload now, refused because of the connection's state (not bulk, not sending, nothing waiting): a 409."""


def is_bulk(connection: Connection) -> bool:
    return connection.output.partner_class.has(Capability.BULK)


def default_criteria(connection: Connection) -> UploadCriteria:
    partner = connection.output.partner_class
    if partner.default_upload_criteria is None:  # prevented when the class is defined (base.check_declaration)
        raise ImproperlyConfigured(f"Bulk partner {partner.key} declares no default_upload_criteria.")
    return partner.default_upload_criteria


def upload_criteria(connection: Connection) -> UploadCriteria:
    """The criteria of one connection: each of its own values, else its partner's default."""
    default = default_criteria(connection)
    return UploadCriteria(
        wait=(
            timedelta(minutes=connection.upload_wait_minutes)
            if connection.upload_wait_minutes is not None
            else default.wait
        ),
        messages=connection.upload_messages if connection.upload_messages is not None else default.messages,
    )


def upload_due(criteria: UploadCriteria, backlog: Backlog, now: datetime) -> bool:
    """First reached wins: enough changes waiting, or the oldest has waited long enough."""
    return due_trigger(criteria, backlog, now) is not None


def due_trigger(criteria: UploadCriteria, backlog: Backlog, now: datetime) -> str | None:
    """Which criterion makes the upload due now (count first), or None."""
    if backlog.waiting == 0:
        return None
    if backlog.waiting >= criteria.messages:
        return Trigger.COUNT
    if backlog.oldest is not None and backlog.oldest <= now - criteria.wait:
        return Trigger.TIME
    return None


def next_upload_at(criteria: UploadCriteria, backlog: Backlog, now: datetime) -> datetime | None:
    """When the upload is due by its criteria: now when enough changes wait, else when the oldest will have
    waited long enough; None with nothing waiting (the wait starts with the next change)."""
    if backlog.waiting == 0 or backlog.oldest is None:
        return None
    if backlog.waiting >= criteria.messages:
        return now
    return backlog.oldest + criteria.wait


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


def _due(now: datetime) -> list[tuple[int, str]]:
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
    # An upload its worker never finished (killed; its lease has expired, or the connection would not be
    # here) is resumed at once, whatever the criteria say of what it left.
    interrupted = set(
        Upload.objects.filter(connection_id__in=waiting, finished_at__isnull=True).values_list(
            "connection_id", flat=True
        )
    )
    due = [
        (c.pk, Trigger.RETRY if c.pk in interrupted else due_trigger(upload_criteria(c), waiting[c.pk], now))
        for c in connections
        if c.pk in waiting
    ]
    return [(pk, trigger) for pk, trigger in due if trigger is not None]


def due_connections(*, now: datetime | None = None) -> list[int]:
    """The sending bulk connections, not being uploaded already (no live lease) nor waiting as a whole
    (a 429's Retry-After, a backoff while the partner is down), whose backlog is due."""
    return [pk for pk, _ in _due(now or timezone.now())]


def flush_due_uploads(*, now: datetime | None = None) -> dict[str, int]:
    """Beat's check (forwarding.tasks.flush_bulk_uploads): queue an upload for every due bulk connection.
    Queuing twice is harmless: the second upload finds the lease taken, or nothing left to send."""
    now = now or timezone.now()
    due = _due(now)
    for connection_id, trigger in due:
        queueing.send_safely(UPLOAD_TASK, connection_id, trigger)
    return {"uploading": len(due), "purged": purge_uploads(now=now)}


# Upload records are kept as long as delivery attempts (forwarding/sweeper.py), each connection's last one longer.
UPLOAD_LOG_DAYS = 30


def purge_uploads(*, now: datetime) -> int:
    """Delete the upload records older than UPLOAD_LOG_DAYS, except each connection's last (its page shows it)."""
    last = Upload.objects.filter(connection=OuterRef("connection")).order_by("-started_at", "-id").values("pk")[:1]
    old = Upload.objects.filter(started_at__lt=now - timedelta(days=UPLOAD_LOG_DAYS)).exclude(pk=Subquery(last))
    deleted, _ = old.delete()
    return deleted


# --- the count trigger: no waiting for beat ------------------------------------------------------

# At most this many outbox rows are counted per check: the count stops at the criteria's messages.
BACKLOG_REACHES_SQL = """
SELECT count(*) FROM (
    SELECT 1 FROM {table} WHERE connection_id = %s AND next_attempt_at <= %s LIMIT %s
) AS waiting
"""
# A connection's headroom, in Redis: how many more rows may be planned before its backlog can reach its
# messages criterion (messages minus the backlog last counted). Rows planned are subtracted at each commit
# (an upper bound of the growth: a coalesced row is counted though the backlog did not grow), and only a
# headroom used up is counted exactly, so a transaction costs one Redis call, not a count of the outbox
# (a bounded count of 750,000 waiting rows takes about 50 ms). A missing key (expired, never set, Redis
# flushed) counts at once; Redis unreachable: every transaction counts.
HEADROOM_TTL_SECONDS = 3600
_headroom_warned_at = -math.inf


def _headroom_key(connection_id: int) -> str:
    return f"{settings.RATE_LIMIT_KEY_PREFIX}bulk-headroom:{connection_id}"


@cache
def _headroom_redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=0.25, socket_timeout=0.25)


def _headroom_used(planned: Mapping[int, int]) -> set[int]:
    """The connections whose headroom these planned rows used up (all of them when Redis fails)."""
    try:
        pipe = _headroom_redis(settings.RATE_LIMIT_REDIS_URL).pipeline(transaction=False)
        for connection_id, rows in planned.items():
            pipe.decrby(_headroom_key(connection_id), rows)
        left = pipe.execute()
    except redis.RedisError as exc:
        global _headroom_warned_at
        if time.monotonic() - _headroom_warned_at >= 60:  # once a minute, not once a transaction
            _headroom_warned_at = time.monotonic()
            logger.warning("bulk uploads' headroom unavailable (Redis: %s); counting backlogs", type(exc).__name__)
        return set(planned)
    return {connection_id for connection_id, room in zip(planned, left, strict=True) if room <= 0}


def _set_headroom(connection_id: int, room: int) -> None:
    try:
        _headroom_redis(settings.RATE_LIMIT_REDIS_URL).set(_headroom_key(connection_id), room, ex=HEADROOM_TTL_SECONDS)
    except redis.RedisError:
        pass  # the next transaction counts


class _BacklogCheck:
    """The bulk connections a transaction planned rows for, with their messages criterion and the rows
    planned, checked once after it commits. One per transaction: note_planned() adds to the one registered."""

    def __init__(self) -> None:
        self.messages: dict[int, int] = {}
        self.planned: dict[int, int] = {}

    def add(self, connection_id: int, messages: int, rows: int) -> None:
        self.messages[connection_id] = messages
        self.planned[connection_id] = self.planned.get(connection_id, 0) + rows

    def __call__(self) -> None:
        to_count = _headroom_used(self.planned)
        if not to_count:
            return
        now = timezone.now()
        table = PendingChange._meta.db_table
        with db.cursor() as cursor:
            for connection_id in sorted(to_count):
                messages = self.messages[connection_id]
                # Bounded: counts at most `messages` index entries, never the whole outbox.
                cursor.execute(BACKLOG_REACHES_SQL.format(table=table), [connection_id, now, messages])
                waiting = cursor.fetchone()[0]
                if waiting >= messages:
                    queueing.send_safely(UPLOAD_TASK, connection_id, Trigger.COUNT)
                    # The upload empties the backlog; beat's check covers one that does not happen.
                    _set_headroom(connection_id, messages)
                else:
                    _set_headroom(connection_id, messages - waiting)


def note_planned(planned: Iterable[tuple[Connection, int]]) -> None:
    """The planner wrote rows (how many) for these connections: once the transaction commits, queue an upload
    for each sending bulk connection whose due backlog reached its messages criterion (never for rolled-back
    rows). At most one Redis call and one bounded count per connection per transaction, whatever the number
    of planning calls in it; the count only once the rows planned since the last one may have reached it."""
    noted = [
        (c.pk, upload_criteria(c).messages, rows)
        for c, rows in planned
        if rows >= 0 and delivers(c.status) and is_bulk(c)
    ]
    if not noted:
        return
    registered = None
    if db.in_atomic_block:
        # The check already registered for this transaction, if any (Django keeps one list per
        # connection, emptied when the transaction commits or rolls back).
        registered = next((entry[1] for entry in db.run_on_commit if isinstance(entry[1], _BacklogCheck)), None)
    check = registered or _BacklogCheck()
    for connection_id, messages, rows in noted:
        check.add(connection_id, messages, rows)
    if registered is None:
        # Robust: a failing check (the database gone after the commit) is logged, and neither fails the
        # committed request nor keeps the transaction's other callbacks (doorbells) from running; beat's
        # check queues the upload then.
        transaction.on_commit(check, robust=True)


# --- editing the criteria, and "upload now" ---------------------------------------------------------


def connection_set_upload_criteria(*, connection: Connection, values: Mapping[str, Any]) -> Connection:
    """Set a bulk connection's own upload criteria (`upload_wait_minutes`, `upload_messages`; None: back to
    the partner's default). Only those fields are written: the row's status and lease belong to others.
    Lowering the messages below the backlog makes the upload due at once (the count check runs)."""
    cleaned = clean_upload_criteria(connection=connection, values=values)
    if cleaned:
        with transaction.atomic():
            Connection.objects.filter(pk=connection.pk).update(**cleaned, updated_at=timezone.now())
            connection.refresh_from_db()
            _set_headroom(connection.pk, 0)  # counted afresh at commit, against the new criteria
            note_planned([(connection, 0)])
    return connection


def upload_now(*, connection: Connection) -> int:
    """Queue an upload of a sending bulk connection's due backlog now, whatever its criteria (after the
    caller's transaction commits). Returns the changes waiting. Refused (UploadRefused, a 409) for a
    real-time connection, one not sending, one waiting for its partner as a whole, or an empty backlog,
    saying why."""
    partner = connection.output.partner_class
    if not is_bulk(connection):
        raise UploadRefused(f"{partner.name} receives changes in real time: there is no upload to start.")
    if not delivers(connection.status):
        raise UploadRefused(
            f"The connection is {connection.status}: it uploads nothing until it is resumed (resuming sends "
            "what is waiting)."
        )
    now = timezone.now()
    if connection.throttled_until and connection.throttled_until > now:
        raise UploadRefused(
            f"The partner is being waited for (its Retry-After, or a backoff while it fails) until "
            f"{connection.throttled_until:%Y-%m-%d %H:%M:%S %Z}: the upload goes out then."
        )
    waiting = backlogs([connection.pk], now).get(connection.pk, Backlog()).waiting
    if not waiting:
        later = PendingChange.objects.filter(connection=connection).count()
        raise UploadRefused(
            f"Nothing to upload: {later:,} changes wait for their retry after an error."
            if later
            else "Nothing to upload: no change is waiting."
        )
    connection_id = connection.pk
    transaction.on_commit(lambda: queueing.send_safely(UPLOAD_TASK, connection_id, Trigger.MANUAL))
    return waiting


# --- one upload ---------------------------------------------------------------------------------------


def upload_connection(*, connection_id: int, trigger: str = Trigger.TIME, task_id: str = "") -> DeliveryReport:
    """One upload: the connection's coalesced outbox, sent and recorded as real-time delivery does, and the
    upload itself recorded (an upload that found nothing to send, or the lease taken, leaves no record)."""
    upload: Upload | None = None

    def started(lease: Lease) -> None:
        nonlocal upload
        if upload is not None:  # delivery took the lease again for changes planned meanwhile
            Upload.objects.filter(pk=upload.pk).update(lease_holder=lease.holder)
            return
        now = timezone.now()
        # We hold the lease: an upload left unfinished is one whose worker died (or lost its lease).
        close_interrupted(connection_id, now)
        upload = Upload.objects.create(
            connection_id=connection_id, trigger=trigger, lease_holder=lease.holder, started_at=now
        )
        nonlocal held_adds
        held_adds += drop_held_adds(connection_id)

    held_adds = 0
    report = deliver_connection(connection_id=connection_id, task_id=task_id, on_lease=started)
    report.skipped += held_adds
    if upload is not None:
        if report.batches == 0 and not held_adds:
            upload.delete()  # a duplicate trigger: the backlog was gone
        else:
            _finish(upload, report)
    return report


# The due adds of identities the partner is known to hold as we last added them (their add was answered, with
# the fingerprint of what it put there): candidates to drop, in id order from `after`. Not "maybe held" (the
# answer never came), "rejected", nor a member found at the partner by a reconcile (held, content unknown:
# fingerprint blank). Each add's attributes are read as delivery reads them, from its profile.
HELD_ADDS_SQL = """
SELECT p.id, p.version, p.identity_type, p.value, pr.attributes, m.fingerprint
FROM {pending} p
JOIN {member} m
  ON m.connection_id = p.connection_id AND m.identity_type = p.identity_type AND m.value = p.value
LEFT JOIN {profile} pr ON pr.id = p.profile_id
WHERE p.connection_id = %s AND p.action = 'add' AND p.next_attempt_at <= %s AND p.id > %s
  AND m.state = 'added' AND m.fingerprint <> ''
ORDER BY p.id
LIMIT %s
"""
# The version guard: a newer word planned meanwhile (a remove, or an add read from other attributes) is kept.
DROP_HELD_ADD_SQL = "DELETE FROM {pending} WHERE id = %s AND version = %s AND action = 'add'"
HELD_ADDS_CHUNK = 5000


def drop_held_adds(connection_id: int) -> int:
    """The upload sends the difference with what the partner holds: a due add identical to the one the partner
    acknowledged (same identity, same attributes: ConnectionMember.fingerprint, forwarding.partner_calls.
    change_fingerprint) changes nothing there, and is dropped (a member removed then re-added between two
    uploads). An add whose attributes changed since is sent. The fingerprint is computed in Python (as
    delivery computes it), the candidates read and dropped in chunks with portable SQL (SQLite for `make
    run`, PostgreSQL), memory flat. Run under the connection's lease (no delivery of it meanwhile). Returns
    how many were dropped."""
    tables = {
        "pending": PendingChange._meta.db_table,
        "member": ConnectionMember._meta.db_table,
        "profile": Profile._meta.db_table,
    }
    select, delete = HELD_ADDS_SQL.format(**tables), DROP_HELD_ADD_SQL.format(**tables)
    now = db.ops.adapt_datetimefield_value(timezone.now())
    dropped = after = 0
    with db.cursor() as cursor:
        while True:
            cursor.execute(select, [connection_id, now, after, HELD_ADDS_CHUNK])
            rows = cursor.fetchall()
            if not rows:
                return dropped
            after = rows[-1][0]
            same = [
                (pk, version)
                for pk, version, identity_type, value, attributes, fingerprint in rows
                if fingerprint == _add_fingerprint(identity_type, value, attributes)
            ]
            if same:
                cursor.executemany(delete, same)  # psycopg pipelines it; rowcount sums the rows deleted
                dropped += cursor.rowcount


def _add_fingerprint(identity_type: str, value: str, attributes: Any) -> str:
    """The fingerprint of the add delivery would send (forwarding/delivery.py builds the same MemberChange)."""
    if isinstance(attributes, str | bytes):  # SQLite, and psycopg where Django leaves jsonb undecoded
        attributes = json.loads(attributes)
    return change_fingerprint(MemberChange(identity_type, value, Action.ADD, attributes=attributes or {}))


def _outcome(report: DeliveryReport) -> tuple[str, str]:
    if report.errors:
        return Upload.Outcome.FAILED, report.errors[-1]
    if report.stopped:
        return Upload.Outcome.STOPPED, report.stopped
    if report.rejected or report.retried:
        return Upload.Outcome.PARTIAL, ""
    return Upload.Outcome.OK, ""


def _finish(upload: Upload, report: DeliveryReport) -> None:
    outcome, detail = _outcome(report)
    sent = _attempt_sums(upload.connection_id, upload.started_at, timezone.now())["sent"]
    Upload.objects.filter(pk=upload.pk).update(
        finished_at=timezone.now(),
        outcome=outcome,
        detail=detail[:2000],
        batches=report.batches,
        sent=sent,
        delivered=report.delivered,
        rejected=report.rejected,
        retried=report.retried,
        skipped=report.skipped,
    )


def _attempt_sums(connection_id: int, since: datetime, until: datetime | None = None) -> dict[str, int]:
    """What the partner calls of the connection's upload since `since` sent and answered (its batch attempts:
    while an upload holds the lease, every call of the connection is its own)."""
    attempts = DeliveryAttempt.objects.filter(connection_id=connection_id, kind="batch", at__gte=since)
    if until is not None:
        attempts = attempts.filter(at__lte=until)
    sums = attempts.aggregate(
        sent=Sum("sent"), delivered=Sum("delivered"), rejected=Sum("rejected"), retried=Sum("retried")
    )
    return {name: value or 0 for name, value in sums.items()}


def close_interrupted(connection_id: int, now: datetime) -> int:
    """Close the uploads of the connection that never finished (their worker was killed or lost the lease),
    with what their recorded calls sent. Called by an upload holding the lease. Returns how many."""
    closed = 0
    for upload in Upload.objects.filter(connection_id=connection_id, finished_at__isnull=True):
        Upload.objects.filter(pk=upload.pk).update(
            finished_at=now,
            outcome=Upload.Outcome.INTERRUPTED,
            detail="The upload stopped without finishing (its worker was stopped or lost its lease); the next "
            "upload sent the changes it had not recorded.",
            **_attempt_sums(connection_id, upload.started_at, now),
        )
        closed += 1
    return closed


# --- what a connection's page and the API show ---------------------------------------------------------


@dataclass(frozen=True)
class UploadSummary:
    """One upload as shown: running (with its progress so far), finished, or interrupted."""

    trigger: str
    started_at: datetime
    finished_at: datetime | None
    running: bool
    outcome: str  # empty while running; "interrupted" for one whose worker died, even before it is closed
    detail: str
    sent: int
    delivered: int
    rejected: int
    retried: int


@dataclass(frozen=True)
class UploadStatus:
    """A bulk connection's upload state: its criteria (and the partner's defaults), the backlog due now, when
    the next upload is due by its criteria, and the last upload."""

    criteria: UploadCriteria
    default: UploadCriteria
    waiting: int
    oldest_waiting_since: datetime | None
    next_upload_due_at: datetime | None  # None: nothing waiting, or the connection is not sending
    check_interval_seconds: int
    last_upload: UploadSummary | None


def _running(upload: Upload, connection: Connection, now: datetime) -> bool:
    return (
        upload.finished_at is None
        and bool(upload.lease_holder)
        and connection.delivery_lease_holder == upload.lease_holder
        and connection.delivery_lease_until is not None
        and connection.delivery_lease_until >= now
    )


def summarize(upload: Upload, connection: Connection, now: datetime) -> UploadSummary:
    running = _running(upload, connection, now)
    if upload.finished_at is None:
        # Running, or dead and not closed yet: what its recorded calls sent so far.
        counts = _attempt_sums(connection.pk, upload.started_at)
        outcome = "" if running else Upload.Outcome.INTERRUPTED
    else:
        counts = {"sent": upload.sent, "delivered": upload.delivered, "rejected": upload.rejected}
        counts["retried"] = upload.retried
        outcome = upload.outcome
    return UploadSummary(
        trigger=upload.trigger,
        started_at=upload.started_at,
        finished_at=upload.finished_at,
        running=running,
        outcome=outcome,
        detail=upload.detail,
        **counts,
    )


def upload_status(connection: Connection, *, now: datetime | None = None) -> UploadStatus | None:
    """None for a connection of a real-time partner. Two queries: the due backlog, the last upload."""
    if not is_bulk(connection):
        return None
    now = now or timezone.now()
    criteria = upload_criteria(connection)
    backlog = backlogs([connection.pk], now).get(connection.pk, Backlog())
    last = Upload.objects.filter(connection=connection).order_by("-started_at", "-id").first()
    return UploadStatus(
        criteria=criteria,
        default=default_criteria(connection),
        waiting=backlog.waiting,
        oldest_waiting_since=backlog.oldest,
        next_upload_due_at=next_upload_at(criteria, backlog, now) if delivers(connection.status) else None,
        check_interval_seconds=int(settings.FORWARDING["BULK_CHECK_INTERVAL"]),
        last_upload=summarize(last, connection, now) if last is not None else None,
    )
