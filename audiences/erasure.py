"""Data-subject erasure, the profile side: a profile found by any of its identities leaves its audiences,
every partner that holds it is told to remove it, and its identities, events, attributes and history are
deleted, leaving a ProfileErasure with counts and no personal data.

One transaction, in this order, because the partners' removes need the identity values that are about to
be deleted: the profile leaves its audiences through the membership ledger (the consumers plan removes on
the audiences' connections), the consumers are told of the erasure with the identity values
(`profile_erasing`: forwarding plans removes on every connection that holds or may hold them, the values
captured in its outbox rows), then the profile's rows are deleted. The erasure is "removing" until the
consumer reports every remove delivered (`erasure_progress`), then "done".
"""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import F, Q
from django.http import Http404
from django.utils import timezone

from audiences.identities import normalise_identity
from audiences.membership.ledger import apply_membership_deltas, publish_profile_erasing
from audiences.membership.locks import lock_audiences_for_evaluation
from audiences.models import (
    ACTIVE_AUDIENCES,
    Audience,
    AudienceMembership,
    Event,
    Identity,
    IdentityConflict,
    MembershipChange,
    Profile,
    ProfileErasure,
)

ERASURE_REASON = "erasure requested"


def profile_find_by_identity(*, identity_type: str, identity_value: object) -> Profile:
    """The profile holding this identity (the value normalised as stored); Http404 when none does."""
    try:
        value = normalise_identity(identity_type, identity_value)
    except ValidationError as exc:
        field = "identity_type" if exc.code == "unknown_type" else "identity_value"
        raise ValidationError({field: exc.messages}) from None
    identity = Identity.objects.filter(type=identity_type, value=value).select_related("profile").first()
    if identity is None:
        raise Http404("No profile holds this identity.")
    return identity.profile


def profile_erase(*, profile_id: int, source: str) -> ProfileErasure:
    """Erase one profile (see the module doc). Http404 if it is gone (erased meanwhile)."""
    now = timezone.now()
    with transaction.atomic():
        # As real-time evaluation does (membership/locks.py): a recompute running now would otherwise
        # write the profile back into an audience after it left. Audience locks first, then the profile.
        member_of = set(AudienceMembership.objects.filter(profile_id=profile_id).values_list("audience_id", flat=True))
        lock_audiences_for_evaluation(
            member_of | set(Audience.objects.filter(ACTIVE_AUDIENCES).values_list("pk", flat=True))
        )
        profile = Profile.objects.select_for_update().filter(pk=profile_id).first()
        if profile is None:
            raise Http404("No such profile.")
        erasure = ProfileErasure.objects.create(requested_at=now, source=source)
        # Read again under the locks: what the profile is a member of now.
        member_of = list(AudienceMembership.objects.filter(profile_id=profile_id).values_list("audience_id", flat=True))
        apply_membership_deltas({a: ((), (profile_id,)) for a in member_of}, now=now, reason=ERASURE_REASON)
        identities = list(Identity.objects.filter(profile_id=profile_id).values_list("type", "value"))
        erasure.partner_removes = publish_profile_erasing(erasure_id=erasure.pk, identities=identities)
        erasure.audiences_left = len(member_of)
        erasure.identity_conflicts = _delete_identity_conflicts(profile_id, identities)
        erasure.history = MembershipChange.objects.filter(profile_id=profile_id).delete()[0]
        erasure.events = Event.objects.filter(profile_id=profile_id).delete()[0]
        erasure.identities = Identity.objects.filter(profile_id=profile_id).delete()[0]
        profile.delete()  # its attributes; nothing else of it is left to cascade
        if not erasure.partner_removes:
            erasure.status, erasure.finished_at = ProfileErasure.Status.DONE, now
        erasure.save()
    return erasure


def _delete_identity_conflicts(profile_id: int, identities: list[tuple[str, str]]) -> int:
    """The identity conflicts that name the profile or quote one of its identities ("type:value")."""
    quoted = {f"{t}:{v}" for t, v in identities}
    candidates = Q(chosen_profile_id=profile_id) | Q(profile_ids__icontains=str(profile_id))
    for text in quoted:
        candidates |= Q(identities__icontains=text) | Q(not_attached__icontains=text)
    doomed = [
        conflict.pk
        for conflict in IdentityConflict.objects.filter(candidates)
        if conflict.chosen_profile_id == profile_id
        or profile_id in conflict.profile_ids
        or quoted & {str(i).lower() for i in (*conflict.identities, *conflict.not_attached)}
        or any(str(i) in quoted for i in (*conflict.identities, *conflict.not_attached))
    ]
    return IdentityConflict.objects.filter(pk__in=doomed).delete()[0]


def erasure_progress(*, erasure_id: int, refused: int, finished: bool) -> None:
    """The consumer's report on an erasure's partner removes: `refused` more were refused by the partner,
    and, when `finished`, none is owed any more: the erasure is done."""
    changes: dict = {"partner_refused": F("partner_refused") + refused}
    if finished:
        changes |= {"status": ProfileErasure.Status.DONE, "finished_at": timezone.now()}
    ProfileErasure.objects.filter(pk=erasure_id, status=ProfileErasure.Status.REMOVING).update(**changes)
