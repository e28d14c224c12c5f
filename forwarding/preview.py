"""Before connecting: the settings tested with the partner, and the first send previewed (a dry run): how
many members, their identities per type (those the partner accepts are what would be sent), and the
partner's own request for a few members. Reads only: nothing is written, queued or sent
(tests/forwarding/test_connect.py shows it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count

from audiences.models import Audience, AudienceMembership, Identity, Profile
from connections.validation import clean_connection_settings
from forwarding.partner_calls import audience_ref
from outputs.models import Output
from outputs.partners.base import Action, MemberChange
from outputs.partners.http import PartnerError

SAMPLE_MEMBERS = 3


@dataclass(frozen=True)
class IdentityCount:
    type: str
    count: int
    sent: bool  # the partner accepts this type: these identities would be sent


@dataclass
class ConnectionPreview:
    members: int  # the audience's members now
    reachable_members: int  # of which with at least one identity the partner accepts
    identities: list[IdentityCount]  # the members' identities per type, most first
    would_send: int  # identities that would be sent: one add each
    sample_request: dict[str, Any] = field(default_factory=dict)  # the partner's request for the first few
    sample_members: int = 0
    is_draft: bool = False


def connection_preview(*, audience: Audience, output: Output, settings: Mapping[str, Any]) -> ConnectionPreview:
    """What connecting `audience` to `output` with these settings would send first. Raises ValidationError
    naming the setting when the settings are not valid."""
    cleaned = clean_connection_settings(output=output, settings=settings)
    accepted = output.partner_class.accepted_identity_types
    members = AudienceMembership.objects.filter(audience=audience)
    identities = Identity.objects.filter(profile__memberships__audience=audience)
    per_type = sorted(
        identities.values("type").annotate(n=Count("id")).values_list("type", "n"), key=lambda row: (-row[1], row[0])
    )
    reachable = identities.filter(type__in=accepted).values("profile_id").distinct().count()
    sample_ids = list(
        members.filter(profile__identities__type__in=accepted)
        .order_by("profile_id")
        .values_list("profile_id", flat=True)
        .distinct()[:SAMPLE_MEMBERS]
    )
    attributes = dict(Profile.objects.filter(pk__in=sample_ids).values_list("pk", "attributes"))
    changes = [
        MemberChange(
            identity_type=kind,
            value=value,
            action=Action.ADD,
            attributes=attributes.get(profile_id, {}),
            profile_id=profile_id,
        )
        for kind, value, profile_id in Identity.objects.filter(profile_id__in=sample_ids, type__in=accepted)
        .order_by("profile_id", "id")
        .values_list("type", "value", "profile_id")
    ]
    return ConnectionPreview(
        members=members.count(),
        reachable_members=reachable,
        identities=[IdentityCount(kind, n, kind in accepted) for kind, n in per_type],
        would_send=sum(n for kind, n in per_type if kind in accepted),
        sample_request=output.partner().describe_batch(cleaned, audience_ref(audience), changes) if changes else {},
        sample_members=len(sample_ids),
        is_draft=audience.status == Audience.Status.DRAFT,
    )


def connection_settings_test(
    *, output: Output, settings: Mapping[str, Any], audience: Audience | None = None
) -> tuple[bool, str]:
    """Ask the partner whether these (cleaned) settings work, before any connection exists: (ok, its words)."""
    try:
        return True, output.partner().test_connection(settings, audience_ref(audience) if audience else None)
    except PartnerError as exc:
        return False, exc.message
