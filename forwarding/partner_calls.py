"""How the generic code calls a partner: told the connection's audience every time, with the claimed changes
shaped by the partner's pattern (Capability): one change per identity for a LIST partner, one update per user
(every identity's change together) for an ATTRIBUTE partner. Delivery, the connect page's preview and the
connection's end all go through here, so no caller branches on a partner."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from audiences.models import Audience, Identity
from config import fast_json
from connections.models import Connection
from outputs.partners.base import (
    Action,
    AudienceRef,
    Capability,
    MemberChange,
    MemberResult,
    Partner,
    group_by_profile,
)


def audience_ref(audience: Audience) -> AudienceRef:
    """The audience as partners are told it (outputs/ knows nothing of audiences' models)."""
    return AudienceRef(id=audience.pk, name=audience.name, external_name=audience.partner_name)


def change_fingerprint(change: MemberChange) -> str:
    """What an add puts at the partner, as 32 hex digits: the identity and the attributes sent with it. Two adds
    with one fingerprint leave the partner in the same state, so the second need not be sent."""
    content = fast_json.dumps_sorted([change.identity_type, change.value, change.attributes])
    return hashlib.blake2b(content, digest_size=16).hexdigest()


def apply_changes(partner: Partner, connection: Connection, changes: Sequence[MemberChange]) -> list[MemberResult]:
    """Send one claimed batch, grouped as the partner's pattern wants; one result per change comes back."""
    audience = audience_ref(connection.audience)
    if partner.has(Capability.ATTRIBUTE):
        return partner.apply_profile_updates(connection.settings, audience, group_by_profile(changes))
    return partner.apply_batch(connection.settings, audience, changes)


def held_removals(partner: Partner, held: Sequence[tuple[str, str]]) -> list[MemberChange]:
    """The removals of identities a connection holds, as its end sends them. An attribute partner names users,
    so each identity carries its profile where it still has one (Braze's MPID setting needs it, and a user's
    identities then go out as one update); a list partner needs the identity alone."""
    profiles: dict[tuple[str, str], int] = {}
    if partner.has(Capability.ATTRIBUTE) and held:
        identities = Identity.objects.filter(type__in={t for t, _ in held}, value__in={v for _, v in held})
        for identity_type, value, profile_id in identities.values_list("type", "value", "profile_id"):
            profiles[(identity_type, value)] = profile_id
    return [MemberChange(t, v, Action.REMOVE, profile_id=profiles.get((t, v))) for t, v in held]
