"""Data-subject erasure, the outbox side (the profile side is audiences/erasure.py).

`planner.plan_erasure_removes` (the outbox's one writer) runs in the erasure's transaction, before the
profile's identities are deleted: every connection that holds one of its identities (we delivered it as
added) or may soon hold it (a pending change for it) gets a remove in the outbox, the value captured in the
outbox row, and an ErasureRemoval row remembers that the remove is owed. The records of identities no
partner holds (removed, rejected) are deleted at once. The normal delivery then sends the removes and
deletes the outbox rows it delivered.

`erasures_finish` (beat, every sweep interval) finds the owed removes whose outbox row is gone (delivered,
refused, or skipped because the partner did not hold it), deletes the connection's record of that member
(it quotes the value), and marks the erasure done when nothing is owed any more. A remove to a paused or
faulted connection waits, as every change does, until it is resumed: the erasure says "removing" until then.
"""

from __future__ import annotations

from django.db import transaction
from django.db.models import Exists, OuterRef

from audiences.erasure import erasure_progress
from audiences.models import ProfileErasure
from connections.models import ConnectionMember
from forwarding.models import ErasureRemoval, PendingChange
from forwarding.planner import NOT_HELD

FINISH_TASK = "forwarding.tasks.finish_erasures"


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
        for row in rows:
            member = ConnectionMember.objects.filter(
                connection_id=row.connection_id, identity_type=row.identity_type, value=row.value
            ).first()
            # A member added since (the same identity on a new profile, who joined again) is new data: kept.
            if member is not None and member.state in NOT_HELD:
                if member.state == ConnectionMember.State.REJECTED and member.updated_at >= row.erasure.requested_at:
                    refused_by_erasure[row.erasure_id] = refused_by_erasure.get(row.erasure_id, 0) + 1
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
