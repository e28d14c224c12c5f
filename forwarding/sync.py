"""Bringing a partner back in line with the audience: resync and reconcile (issue 11, the connection life cycle).

Resync trusts our records: it plans only the difference between what the partner should hold (the audience's
members' accepted identities) and what ConnectionMember says it holds. Reconcile trusts the partner: where
it can list its members (Capability.LISTS_MEMBERS), a task reads them back and repairs drift made at the partner
by hand (members missing there are added again, non-members subscribed there removed, ConnectionMember
corrected). A partner-side list may be shared with other tools: reconcile removes only what this connection is
responsible for (identities it holds or held: ConnectionMember, RetiredMember of its current target), and
reports the others as "not ours", untouched. Both are set-based SQL under the audience's membership lock
(as connection_create takes it), so a membership change is either seen by them or planned after them, never
lost between.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from itertools import islice

from django.core.exceptions import ValidationError
from django.db import connection as db
from django.db import transaction
from django.db.models import Q
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from audiences.membership.locks import lock_audience_membership
from audiences.models import AudienceMembership, Identity
from connections.models import Connection, ConnectionMember
from connections.selectors import MAY_BE_HELD
from forwarding import planner
from forwarding.delivery import attempt_error
from forwarding.doorbell import JOB_TASKS, ring_job, ring_job_after_commit
from forwarding.models import UNFINISHED_JOBS, ConnectionJob, PendingChange, RetiredMember
from forwarding.partner_calls import audience_ref
from outputs.partners.base import Action, Capability, MemberChange
from outputs.partners.http import PartnerError

logger = logging.getLogger(__name__)
# Members read from the partner per insert into the reconcile's table (and per progress update).
READ_CHUNK = 1000
ADDED = ConnectionMember.State.ADDED
REMOVED = ConnectionMember.State.REMOVED
REJECTED = ConnectionMember.State.REJECTED

# The accepted identities of the audience's members: what the partner should hold.
SHOULD_HOLD = """
SELECT i.type AS identity_type, i.value, i.profile_id
FROM {membership} m JOIN {identity} i ON i.profile_id = m.profile_id
WHERE m.audience_id = %(audience)s AND i.type IN (%(types)s)
"""
# Upsert into the outbox; a pending change already saying the same is left alone (a batch in flight that
# sent it still deletes it: its version is unchanged).
UPSERT_TAIL = """
ON CONFLICT (connection_id, identity_type, value) DO UPDATE
SET action = excluded.action, profile_id = excluded.profile_id, version = {pending}.version + 1,
    attempts = 0, next_attempt_at = excluded.next_attempt_at, last_error = ''
WHERE {pending}.action <> excluded.action
"""
# An add for each identity the partner should hold and {held} does not list (a SELECT of identity_type, value).
PLAN_ADDS = """
INSERT INTO {pending} (connection_id, identity_type, value, action, profile_id, version, attempts,
                       next_attempt_at, last_error, created_at)
SELECT %(connection)s, s.identity_type, s.value, 'add', s.profile_id, 1, 0, %(now)s, '', %(now)s
FROM ({should}) s
WHERE NOT EXISTS (SELECT 1 FROM ({held}) h WHERE h.identity_type = s.identity_type AND h.value = s.value)
{upsert_tail}
"""
# A remove for each identity {held} lists that the partner should not hold.
PLAN_REMOVES = """
INSERT INTO {pending} (connection_id, identity_type, value, action, profile_id, version, attempts,
                       next_attempt_at, last_error, created_at)
SELECT %(connection)s, h.identity_type, h.value, 'remove',
       (SELECT i.profile_id FROM {identity} i WHERE i.type = h.identity_type AND i.value = h.value), 1, 0,
       %(now)s, '', %(now)s
FROM ({held}) h
WHERE NOT EXISTS (SELECT 1 FROM ({should}) s WHERE s.identity_type = h.identity_type AND s.value = h.value)
{upsert_tail}
"""
# What our records say the partner holds, in `states`.
RECORDED = "SELECT identity_type, value FROM {member} WHERE connection_id = %(connection)s AND state IN (%({states})s)"


def _tables(**extra: str) -> dict[str, str]:
    names = {
        "pending": PendingChange._meta.db_table,
        "member": ConnectionMember._meta.db_table,
        "membership": AudienceMembership._meta.db_table,
        "identity": Identity._meta.db_table,
        **extra,
    }
    return {**names, "should": SHOULD_HOLD.format(**names), "upsert_tail": UPSERT_TAIL.format(**names)}


def _params(connection: Connection, **extra: object) -> dict[str, object]:
    return {
        "connection": connection.pk,
        "audience": connection.audience_id,
        "types": sorted(connection.output.partner_class.accepted_identity_types),
        "now": timezone.now(),
        "may_be_held": list(MAY_BE_HELD),
        **extra,
    }


# A list parameter inside IN (...): `IN (%(types)s)`.
LIST_IN = re.compile(r"IN \(%\((\w+)\)s\)")


def _with_lists(sql: str, params: Mapping[str, object]) -> tuple[str, dict[str, object]]:
    """The statement and its parameters with each list parameter written out, one placeholder a value:
    `IN (%(types)s)` becomes `IN (%(types_0)s, %(types_1)s)`. Portable where `= ANY(%(types)s)` is PostgreSQL
    only (SQLite: `make run`), and the same plan there (PostgreSQL reads a list of constants as = ANY). An
    empty list is `IN (NULL)`: true for no row."""
    out = {name: value for name, value in params.items() if not isinstance(value, list | tuple)}

    def expand(match: re.Match[str]) -> str:
        name = match.group(1)
        values = params[name]
        if not isinstance(values, list | tuple):
            raise TypeError(f"{name} is inside IN (...) but is no list: {values!r}")
        names = [f"{name}_{i}" for i in range(len(values))]
        out.update(zip(names, values, strict=True))
        return "IN ({})".format(", ".join(f"%({n})s" for n in names) or "NULL")

    return LIST_IN.sub(expand, sql), out


def _locked_connection(connection: Connection) -> Connection:
    """Under the audience's membership lock (call in a transaction): the connection, read afresh and locked."""
    lock_audience_membership(connection.audience_id)
    row = Connection.objects.select_for_update().select_related("output", "audience").get(pk=connection.pk)
    if row.status == Connection.Status.ENDING:
        raise ValidationError({"status": ["This connection is being deleted."]})
    return row


@dataclass(frozen=True)
class ResyncResult:
    adds_planned: int  # identities the partner should hold and our records say it does not
    removes_planned: int  # identities our records say it holds (or may hold) that are no longer members

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def connection_resync(*, connection: Connection, include_rejected: bool = False) -> ResyncResult:
    """Plan only the difference between what the partner should hold and what ConnectionMember says it holds:
    an add for each accepted identity of a member it does not hold (identities it refused for good are left
    out unless `include_rejected`: e.g. after fixing what made them fail), a remove for each identity it holds
    or may hold that is no member's any more. Two INSERT ... SELECT statements, whatever the audience's size."""
    with transaction.atomic():
        row = _locked_connection(connection)
        # Only an add the partner answered counts as held here: one it may hold (never answered) is sent again.
        held = [ADDED] if include_rejected else [ADDED, REJECTED]
        tables = _tables()
        with db.cursor() as cursor:
            adds_sql = PLAN_ADDS.format(**{**tables, "held": RECORDED.format(member=tables["member"], states="held")})
            cursor.execute(*_with_lists(adds_sql, _params(row, held=held)))
            adds = cursor.rowcount
            removes_held = RECORDED.format(member=tables["member"], states="may_be_held")
            cursor.execute(*_with_lists(PLAN_REMOVES.format(**{**tables, "held": removes_held}), _params(row)))
            removes = cursor.rowcount
        if adds or removes:
            planner.ring_connections_after_commit([row])
    return ResyncResult(adds, removes)


# --- reconcile ----------------------------------------------------------------------------------------


def connection_reconcile_start(*, connection: Connection) -> ConnectionJob:
    """Queue a reconcile of the connection with what its partner holds; a reconcile already queued or running
    is returned instead of starting another. Only partners that can list their members reconcile."""
    partner_class = connection.output.partner_class
    if not partner_class.has(Capability.LISTS_MEMBERS):
        raise ValidationError(
            {
                "connection": [
                    f"{partner_class.name} cannot list the members it holds, so there is nothing to reconcile "
                    "with: use resync, which compares the audience with our records."
                ]
            }
        )
    with transaction.atomic():
        row = Connection.objects.select_for_update().get(pk=connection.pk)
        if row.status == Connection.Status.ENDING:
            raise ValidationError({"status": ["This connection is being deleted."]})
        running = ConnectionJob.objects.filter(
            connection=row, kind=ConnectionJob.Kind.RECONCILE, status__in=UNFINISHED_JOBS
        ).first()
        if running is not None:
            return running
        job = ConnectionJob.objects.create(connection=row, kind=ConnectionJob.Kind.RECONCILE)
        ring_job_after_commit(job.kind, job.pk)
    return job


SEEN_TABLE = """
CREATE TEMPORARY TABLE {seen} (identity_type varchar(40) NOT NULL, value varchar(255) NOT NULL,
                               held boolean NOT NULL, PRIMARY KEY (identity_type, value))
"""
SEEN_INSERT = "INSERT INTO {seen} (identity_type, value, held) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING"
# What the partner holds, as read: a member absent or unsubscribed there is added again (unless it refused it for
# good: it would refuse it again), a non-member subscribed there is removed if it is ours.
SEEN_HELD = "SELECT p.identity_type, p.value FROM {seen} p WHERE p.held AND p.identity_type IN (%(types)s)"
NOT_TO_ADD = SEEN_HELD + " UNION ALL " + RECORDED.replace("{states}", "rejected")
# An identity seen at the partner (p) this connection is responsible for there: one our records say it holds or
# held (an add it refused made it hold nothing of ours), or one the current target held for it before an edit
# moved the connection away and back (RetiredMember of the clean-up jobs with the current target's settings).
# Anything else on a shared list was put there by someone else.
OURS = """(
    EXISTS (SELECT 1 FROM {member} cm WHERE cm.connection_id = %(connection)s AND cm.identity_type = p.identity_type
            AND cm.value = p.value AND cm.state <> 'rejected')
    OR EXISTS (SELECT 1 FROM {retired} r WHERE r.job_id IN (%(retired_jobs)s)
               AND r.identity_type = p.identity_type AND r.value = p.value)
)"""
SHOULD_HOLD_SEEN = "EXISTS (SELECT 1 FROM ({should}) s WHERE s.identity_type = p.identity_type AND s.value = p.value)"
SEEN_HELD_OURS = SEEN_HELD + " AND " + OURS
NOT_OURS = """
SELECT count(*) FROM {seen} p
WHERE p.held AND p.identity_type IN (%(types)s) AND NOT {ours} AND NOT {should_seen}
""".replace("{ours}", OURS).replace("{should_seen}", SHOULD_HOLD_SEEN)
# Our records, as the partner answered: held there → added; not held there → removed. Only rows not written
# since the reading began: a delivery recorded meanwhile knows better than the page read before it. What the
# partner holds of a member found there is unknown (fingerprint blank): the next add of it is sent. An identity
# found there that is neither ours nor a member's gets no record: it is not ours to remove, now or at the end.
RECONCILE_HELD = """
INSERT INTO {member} (connection_id, identity_type, value, state, reason, updated_at)
SELECT %(connection)s, p.identity_type, p.value, 'added', 'Found at the partner by a reconcile.', %(now)s
FROM {seen} p WHERE p.held AND p.identity_type IN (%(types)s) AND ({should_seen} OR {ours})
ON CONFLICT (connection_id, identity_type, value) DO UPDATE
SET state = 'added', reason = excluded.reason, fingerprint = '', updated_at = excluded.updated_at
WHERE {member}.state <> 'added' AND {member}.updated_at < %(started)s
""".replace("{ours}", OURS).replace("{should_seen}", SHOULD_HOLD_SEEN)
# `AS cm`: SQLite takes an UPDATE's alias only after AS.
RECONCILE_NOT_HELD = """
UPDATE {member} AS cm SET state = 'removed', reason = 'Not held at the partner, found by a reconcile.',
       fingerprint = '', updated_at = %(now)s
WHERE cm.connection_id = %(connection)s AND cm.state IN (%(may_be_held)s) AND cm.updated_at < %(started)s
AND NOT EXISTS (SELECT 1 FROM {seen} p WHERE p.identity_type = cm.identity_type AND p.value = cm.value AND p.held)
"""


def reconcile_run(*, job_id: int, task_id: str = "") -> dict[str, object]:
    """Run a queued reconcile: read every member the partner holds into a temporary table (progress in the
    job as it goes), then repair set-wise under the audience's membership lock. Returns the job's result."""
    claimed = ConnectionJob.objects.filter(
        pk=job_id, kind=ConnectionJob.Kind.RECONCILE, status=ConnectionJob.Status.QUEUED
    ).update(
        status=ConnectionJob.Status.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        task_id=task_id[:255],
    )
    if not claimed:
        return {"skipped": "gone, running or done"}
    job = ConnectionJob.objects.select_related("connection__output", "connection__audience").get(pk=job_id)
    connection = job.connection
    seen = f"reconcile_seen_{job.pk}"
    tables = _tables(seen=seen, retired=RetiredMember._meta.db_table)
    try:
        # The temporary table lives in this session; each insert commits on its own (autocommit), so the
        # progress written between them is visible to the admin and the API while the reading goes on.
        with db.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {seen}")
            cursor.execute(SEEN_TABLE.format(seen=seen))
        started = timezone.now()
        read = _read_partner(job, connection, seen)
        with transaction.atomic():
            row = _locked_connection(connection)
            params = _params(row, started=started, rejected=[REJECTED], retired_jobs=_current_target_jobs(row))
            result: dict[str, object] = {"read": read}
            with db.cursor() as cursor:
                not_to_add = NOT_TO_ADD.format(seen=seen, member=tables["member"])
                for key, sql in (
                    ("adds_planned", PLAN_ADDS.replace("{held}", not_to_add)),
                    ("removes_planned", PLAN_REMOVES.replace("{held}", SEEN_HELD_OURS)),
                    ("not_ours", NOT_OURS),
                    ("marked_held", RECONCILE_HELD),
                    ("marked_not_held", RECONCILE_NOT_HELD),
                ):
                    cursor.execute(*_with_lists(sql.format(**tables), params))
                    result[key] = cursor.fetchone()[0] if key == "not_ours" else cursor.rowcount
            if result["adds_planned"] or result["removes_planned"]:
                planner.ring_connections_after_commit([row])
            ConnectionJob.objects.filter(pk=job.pk).update(
                status=ConnectionJob.Status.DONE,
                finished_at=timezone.now(),
                result=result,
                done=read,
                total=Greatest(Coalesce("total", 0), read),  # x of x once read: members joined meanwhile count
            )
        return result
    except (PartnerError, ValidationError) as exc:
        message = exc.message if isinstance(exc, PartnerError) else " ".join(exc.messages)
        ConnectionJob.objects.filter(pk=job.pk).update(
            status=ConnectionJob.Status.FAILED, finished_at=timezone.now(), error=attempt_error(message)
        )
        logger.warning("reconcile of connection %s failed: %s", connection.pk, message)
        return {"error": message}
    finally:
        with db.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {seen}")


def _current_target_jobs(connection: Connection) -> list[int]:
    """The old-target clean-ups of the connection whose old target is its current one (edited away and back):
    their RetiredMember rows are identities it held there."""
    names = connection.output.partner_class.target_setting_names()
    current = {name: connection.settings.get(name) for name in names}
    jobs = ConnectionJob.objects.filter(connection=connection, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP)
    return [pk for pk, old in jobs.values_list("pk", "settings") if names and current == {n: old.get(n) for n in names}]


def _read_partner(job: ConnectionJob, connection: Connection, seen: str) -> int:
    """Every member the partner lists, into the `seen` table, READ_CHUNK at a time; returns how many. The job's
    total is what the partner says it is about to list, when it can say, so its progress reads x of N."""
    partner = connection.output.partner()
    audience = audience_ref(connection.audience)
    total = partner.listed_members_total(connection.settings, audience)
    ConnectionJob.objects.filter(pk=job.pk).update(total=total, heartbeat_at=timezone.now())
    members: Iterator[MemberChange] = partner.list_members(connection.settings, audience)
    read = 0
    while chunk := list(islice(members, READ_CHUNK)):
        with db.cursor() as cursor:
            cursor.executemany(
                SEEN_INSERT.format(seen=seen), [(m.identity_type, m.value, m.action is Action.ADD) for m in chunk]
            )
        read += len(chunk)
        ConnectionJob.objects.filter(pk=job.pk).update(done=read, heartbeat_at=timezone.now())
    return read


# A queued job not started this long after it was due lost its task (a broker restart); a running one silent
# this long lost its worker (kill -9): the sweeper rings them again (claiming is atomic, a duplicate is a no-op).
JOB_QUEUED_GRACE = timedelta(minutes=2)
JOB_SILENT_GRACE = timedelta(minutes=10)


def jobs_ring_stalled(now: datetime) -> int:
    """Ring again the ConnectionJobs no task is handling; returns how many."""
    silent = list(
        ConnectionJob.objects.filter(
            status=ConnectionJob.Status.RUNNING, heartbeat_at__lt=now - JOB_SILENT_GRACE
        ).values_list("pk", flat=True)
    )
    # Back to queued, so the next task claims it (and a late answer of the lost one claims nothing).
    ConnectionJob.objects.filter(pk__in=silent, status=ConnectionJob.Status.RUNNING).update(
        status=ConnectionJob.Status.QUEUED, heartbeat_at=now
    )
    waiting = ConnectionJob.objects.filter(status=ConnectionJob.Status.QUEUED, kind__in=JOB_TASKS).filter(
        Q(heartbeat_at__lt=now - JOB_QUEUED_GRACE) | Q(pk__in=silent)
    )
    stalled = list(waiting.values_list("kind", "pk"))
    for kind, job_id in stalled:
        ring_job(kind, job_id)
    return len(stalled)
