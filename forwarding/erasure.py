"""Data-subject erasure, the outbox side (the profile side is audiences/erasure.py).

`planner.plan_erasure_removes` (the outbox's one writer) runs in the erasure's transaction, before the
profile's identities are deleted: every connection that holds one of its identities (we delivered it as
added) or may soon hold it (a pending change for it) gets a remove in the outbox, the value captured in the
outbox row, and an ErasureRemoval row remembers that the remove is owed. The records of identities no
partner holds (removed, rejected) are deleted at once. The normal delivery then sends the removes and
deletes the outbox rows it delivered.

`erasures_finish` (beat, every sweep interval) finds the owed removes whose outbox row is gone (delivered,
refused, or skipped because the partner did not hold it), asks partners that can (Capability.FORGETS_MEMBERS,
e.g. Mailchimp's permanent delete: its remove is an unsubscribe, which keeps the address) to forget the member
for good, deletes the connection's record of that member (it quotes the value), and marks the erasure done
when nothing is owed any more. A partner failing to forget keeps that connection's rows owed (a DeliveryAttempt
of kind "erasure" says why); the next run tries again, and the other connections go on. A remove to a paused or
faulted connection waits, as every change does, until it is resumed: the erasure says "removing" until then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from django.db import connection as db
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from audiences.erasure import erasure_progress
from audiences.models import ProfileErasure
from connections.models import Connection, ConnectionMember
from connections.status import delivers
from forwarding import recovery
from forwarding.delivery import attempt_error
from forwarding.models import DeliveryAttempt, ErasureRemoval, PendingChange
from forwarding.partner_calls import audience_ref
from forwarding.planner import NOT_HELD
from outputs.partners.base import Action, Capability, MemberChange, Outcome
from outputs.partners.http import PartnerError, TransientError

logger = logging.getLogger(__name__)

FINISH_TASK = "forwarding.tasks.finish_erasures"
# The most identities one run asks one connection's partner to forget (one call each at Mailchimp); the rest
# stay owed for the next run.
FORGET_BATCH = 100


def erasures_finish() -> dict[str, int]:
    """Forget the owed removes that were delivered, and finish the erasures owing none. One run at a time (a
    second one finds the finisher busy and leaves); safe to run again.

    No transaction is open while partners are called (a slow partner would hold row locks and a database
    connection for the whole call): the owed rows are read, the partners asked, then the rows locked and
    settled in one short transaction. A row that got a new outbox change meanwhile stays owed."""
    with finisher_running() as running:
        if not running:
            return {"delivered": 0, "refused": 0, "finished": 0}
        rows = list(ErasureRemoval.objects.filter(~Exists(_pending_for_row())).order_by("pk")[:5000])
        # A member added since (the same identity on a new profile, who joined again) is new data: kept, and
        # not forgotten at the partner.
        members = _members(rows)
        rejoined = {pk for pk, member in members.items() if member.state not in NOT_HELD}
        owed, refused_forgets = _forget_at_partners([row for row in rows if row.pk not in rejoined])
        return _settle([row.pk for row in rows if row.pk not in owed], rejoined, refused_forgets)


def _pending_for_row() -> Exists:
    return Exists(
        PendingChange.objects.filter(
            connection_id=OuterRef("connection_id"), identity_type=OuterRef("identity_type"), value=OuterRef("value")
        )
    )


def _members(rows: list[ErasureRemoval]) -> dict[int, ConnectionMember]:
    """The connection's record of each owed row's identity, by row id, in one query."""
    keys = {(row.connection_id, row.identity_type, row.value): row.pk for row in rows}
    members = ConnectionMember.objects.filter(
        connection_id__in={c for c, _, _ in keys}, value__in={v for _, _, v in keys}
    )
    found = {}
    for member in members:
        row_id = keys.get((member.connection_id, member.identity_type, member.value))
        if row_id is not None:
            found[row_id] = member
    return found


def _settle(row_ids: list[int], rejoined: set[int], refused_forgets: set[int]) -> dict[str, int]:
    """In one transaction: drop the records of the delivered removes (kept for a member who rejoined), count
    the refusals per erasure, and finish the erasures that owe nothing more."""
    delivered = finished = 0
    refused_by_erasure: dict[int, int] = {}
    with transaction.atomic():
        rows = list(
            ErasureRemoval.objects.select_for_update(of=("self",))
            .filter(~_pending_for_row(), pk__in=row_ids)
            .select_related("erasure")
            .order_by("pk")
        )
        members = _members(rows)  # read again under the rows' locks: a delivery may have recorded since
        forgotten: list[int] = []
        for row in rows:
            member = members.get(row.pk)
            if row.pk in refused_forgets or (
                member is not None
                and member.state == ConnectionMember.State.REJECTED
                and member.updated_at >= row.erasure.requested_at
            ):
                refused_by_erasure[row.erasure_id] = refused_by_erasure.get(row.erasure_id, 0) + 1
            if member is not None and row.pk not in rejoined:
                forgotten.append(member.pk)
            delivered += 1
        ConnectionMember.objects.filter(pk__in=forgotten).delete()
        ErasureRemoval.objects.filter(pk__in=[row.pk for row in rows]).delete()
        for erasure_id in {row.erasure_id for row in rows} | set(
            ProfileErasure.objects.filter(status=ProfileErasure.Status.REMOVING).values_list("pk", flat=True)
        ):
            done = not ErasureRemoval.objects.filter(erasure_id=erasure_id).exists()
            finished += done
            erasure_progress(erasure_id=erasure_id, refused=refused_by_erasure.get(erasure_id, 0), finished=done)
    return {"delivered": delivered, "refused": sum(refused_by_erasure.values()), "finished": finished}


# pg_try_advisory_lock(namespace, key): one finisher at a time, held across its transactions (session level).
FINISHER_LOCK = (0x45524153, 1)  # "ERAS"


@contextmanager
def finisher_running() -> Iterator[bool]:
    """True when this run holds the finisher's lock (always on SQLite, which has one writer anyway)."""
    if db.vendor != "postgresql":
        yield True
        return
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", FINISHER_LOCK)
        held = cursor.fetchone()[0]
    try:
        yield held
    finally:
        if held:
            with db.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", FINISHER_LOCK)


def _forget_at_partners(rows: list[ErasureRemoval]) -> tuple[set[int], set[int]]:
    """Ask each connection whose partner forgets members to forget these delivered removes' identities (at most
    FORGET_BATCH per connection and run). Returns the rows still owed (not asked yet, the connection paused or
    faulted, or the call failed) and the rows whose forgetting the partner refused."""
    by_connection: dict[int, list[ErasureRemoval]] = {}
    for row in rows:
        by_connection.setdefault(row.connection_id, []).append(row)
    connections = Connection.objects.select_related("output", "audience").in_bulk(list(by_connection))
    owed: set[int] = set()
    refused: set[int] = set()
    for connection_id, connection_rows in by_connection.items():
        connection = connections[connection_id]
        if not connection.output.partner_class.has(Capability.FORGETS_MEMBERS):
            continue  # the delivered remove is all this partner can do
        if not delivers(connection.status):
            owed.update(row.pk for row in connection_rows)  # waits for Resume, as its changes do
            continue
        asked, later = connection_rows[:FORGET_BATCH], connection_rows[FORGET_BATCH:]
        owed.update(row.pk for row in later)
        identities = {row.pk: MemberChange(row.identity_type, row.value, Action.REMOVE) for row in asked}
        partner = connection.output.partner()
        started = time.monotonic()
        try:
            results = partner.forget_members(
                connection.settings, audience_ref(connection.audience), list(identities.values())
            )
        except Exception as exc:  # one connection's failure (or a bug) never stops the others' erasures
            if not isinstance(exc, PartnerError):
                logger.exception("forgetting erased members at connection %s failed unexpectedly", connection_id)
            error = exc if isinstance(exc, PartnerError) else TransientError(f"unexpected error: {exc!r}")
            owed.update(identities)
            DeliveryAttempt.objects.create(
                connection=connection,
                kind="erasure",
                at=timezone.now(),
                duration_ms=int((time.monotonic() - started) * 1000),
                http_status=error.status,
                error_code=error.code,
                sent=len(identities),
                result=recovery.attempt_result(error),
                error=attempt_error(error.message),
            )
            continue
        outcomes = {(r.change.identity_type, r.change.value): r.outcome for r in results}
        for pk, identity in identities.items():
            outcome = outcomes.get((identity.identity_type, identity.value), Outcome.RETRY)
            if outcome is Outcome.REJECTED:
                refused.add(pk)
            elif outcome is not Outcome.DELIVERED:
                owed.add(pk)
        DeliveryAttempt.objects.create(
            connection=connection,
            kind="erasure",
            at=timezone.now(),
            duration_ms=int((time.monotonic() - started) * 1000),
            http_status=partner.last_http_status(),
            sent=len(identities),
            delivered=len(identities) - len(refused & set(identities)) - len(owed & set(identities)),
            rejected=len(refused & set(identities)),
            retried=len(owed & set(identities)),
            result=DeliveryAttempt.Result.OK
            if not (owed | refused) & set(identities)
            else DeliveryAttempt.Result.PARTIAL,
        )
    return owed, refused
