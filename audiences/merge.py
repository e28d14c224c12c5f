"""Merging two profiles of one person: the answer to an identity conflict.

An identity conflict (audiences.events_api.resolution) leaves identities of one person on two profiles.
Merging moves everything of the other profile onto the kept one (identities, events, audience history;
attributes: the kept profile's values win, the other's fill the gaps), deletes the other, and forwards the
consequences in the same transaction, through the membership ledger as any change does:

1. the other profile leaves its audiences (its identities are queued for removal on their connections);
2. its identities, events and history move to the kept profile, which is re-evaluated against every
   active audience: entering and leaving audiences as the joined data says;
3. in the audiences the kept profile stays in, its identities are queued again (the moved ones are new
   there, and attributes may have changed), so each partner's last word per identity is the right one
   (the outbox keeps the last word: an identity removed in 1 and re-added in 3 is simply added).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from audiences.membership.evaluation import active_audiences, evaluate_profiles
from audiences.membership.ledger import apply_membership_deltas, publish_members_updated
from audiences.membership.locks import lock_audiences_for_evaluation
from audiences.models import AudienceMembership, Event, Identity, IdentityConflict, MembershipChange, Profile


@dataclass
class MergeResult:
    profile_id: int  # the kept profile
    merged_profile_id: int  # deleted
    identities_moved: int
    events_moved: int
    history_moved: int
    entered: list[int] = field(default_factory=list)  # audience ids the kept profile entered
    left: list[int] = field(default_factory=list)


def profiles_merge(*, profile_id: int, other_id: int) -> MergeResult:
    """Merge profile `other_id` into `profile_id` (kept), re-evaluate and forward the consequences, in one
    transaction. Raises ValidationError naming `profile` when the other profile is the same or missing."""
    if profile_id == other_id:
        raise ValidationError({"profile": ["A profile cannot be merged into itself."]})
    now = timezone.now()
    with transaction.atomic():
        # Both rows locked, in id order (no deadlock with an evaluation of either).
        locked = {
            p.pk: p for p in Profile.objects.select_for_update().filter(pk__in=[profile_id, other_id]).order_by("pk")
        }
        if profile_id not in locked:
            raise Profile.DoesNotExist(f"No profile {profile_id}.")
        if other_id not in locked:
            raise ValidationError({"profile": [f"No profile {other_id}."]})
        kept, other = locked[profile_id], locked[other_id]
        # As real-time evaluation does: a recompute running meanwhile must not undo what is written here.
        lock_audiences_for_evaluation(audience.id for audience in active_audiences())

        # 1. The other profile leaves every audience it is in.
        other_audiences = list(AudienceMembership.objects.filter(profile=other).values_list("audience_id", flat=True))
        apply_membership_deltas(
            {audience_id: ((), (other.pk,)) for audience_id in other_audiences},
            now=now,
            reason=f"merged into profile {kept.pk}",
        )
        before = set(AudienceMembership.objects.filter(profile=kept).values_list("audience_id", flat=True))

        # 2. Everything moves to the kept profile.
        identities_moved = Identity.objects.filter(profile=other).update(profile=kept)
        events_moved = Event.objects.filter(profile=other).update(profile=kept)
        history_moved = MembershipChange.objects.filter(profile=other).update(profile=kept)
        IdentityConflict.objects.filter(chosen_profile=other).update(chosen_profile=kept)
        kept.attributes = {**(other.attributes or {}), **(kept.attributes or {})}
        kept.save(update_fields=["attributes", "updated_at"])
        other.delete()

        changes = evaluate_profiles([kept.pk], now=now, reason=f"merged with profile {other_id}")
        entered, left = changes.get(kept.pk, ([], []))
        # 3. Where it stays, its identities (the moved ones new there) and attributes are sent again.
        publish_members_updated(profile_id=kept.pk, audience_ids=sorted(before - set(left)), identity_ids=None)
    return MergeResult(
        profile_id=kept.pk,
        merged_profile_id=other_id,
        identities_moved=identities_moved,
        events_moved=events_moved,
        history_moved=history_moved,
        entered=sorted(entered),
        left=sorted(left),
    )


def conflict_resolve(*, conflict: IdentityConflict) -> list[MergeResult]:
    """Resolve an identity conflict by merging its profiles into the one the rule chose (or, if that one
    is gone, the oldest still there). Profiles already merged or deleted are skipped."""
    ids = sorted({int(pk) for pk in conflict.profile_ids} | ({conflict.chosen_profile_id} - {None}))
    existing = set(Profile.objects.filter(pk__in=ids).values_list("pk", flat=True))
    kept = conflict.chosen_profile_id if conflict.chosen_profile_id in existing else min(existing, default=None)
    results = []
    with transaction.atomic():
        for other_id in sorted(existing - {kept}):
            results.append(profiles_merge(profile_id=kept, other_id=other_id))
        IdentityConflict.objects.filter(pk=conflict.pk).update(
            resolved_at=timezone.now(),
            resolution=f"merged profiles {', '.join(str(r.merged_profile_id) for r in results)} into {kept}"
            if results
            else "nothing to merge: a single profile is left",
        )
    return results
