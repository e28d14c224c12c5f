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
    """Forget the owed removes that were delivered, and finish the erasures owing none. Safe to run at once
    (rows are locked, skipping those another run holds) and again."""
    pending = PendingChange.objects.filter(
        connection_id=OuterRef("connection_id"), identity_type=OuterRef("identity_type"), value=OuterRef("value")
    )
    delivered = refused = finished = 0
    with transaction.atomic():
        rows = list(
            ErasureRemoval.objects.select_for_update(skip_locked=True)
            .filter(~Exists(pending))
            .select_related("erasure")
            .order_by("pk")[:5000]
        )
        refused_by_erasure: dict[int, int] = {}
        members = {
            row.pk: ConnectionMember.objects.filter(
                connection_id=row.connection_id, identity_type=row.identity_type, value=row.value
            ).first()
            for row in rows
        }
        # A member added since (the same identity on a new profile, who joined again) is new data: kept, and
        # not forgotten at the partner.
        rejoined = {pk for pk, member in members.items() if member is not None and member.state not in NOT_HELD}
        owed, refused_forgets = _forget_at_partners([row for row in rows if row.pk not in rejoined])
        rows = [row for row in rows if row.pk not in owed]
        for row in rows:
            member = members[row.pk]
            if row.pk in refused_forgets or (
                member is not None
                and member.state == ConnectionMember.State.REJECTED
                and member.updated_at >= row.erasure.requested_at
            ):
                refused_by_erasure[row.erasure_id] = refused_by_erasure.get(row.erasure_id, 0) + 1
            if member is not None and row.pk not in rejoined:
                member.delete()
            delivered += 1
        ErasureRemoval.objects.filter(pk__in=[row.pk for row in rows]).delete()
        refused = sum(refused_by_erasure.values())
        for erasure_id in {row.erasure_id for row in rows} | set(
            ProfileErasure.objects.filter(status=ProfileErasure.Status.REMOVING).values_list("pk", flat=True)
        ):
            done = not ErasureRemoval.objects.filter(erasure_id=erasure_id).exists()
            finished += done
            erasure_progress(erasure_id=erasure_id, refused=refused_by_erasure.get(erasure_id, 0), finished=done)
    return {"delivered": delivered, "refused": refused, "finished": finished}


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
