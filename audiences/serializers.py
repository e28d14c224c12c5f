"""API shapes for profiles and audiences.

Request serializers check the shape only (types, presence); the rules (identity formats,
criteria, name lengths and uniqueness) live in audiences.profiles and audiences.services, which name the field
of every error, so they are not repeated here.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from audiences import selectors
from audiences.identities import IDENTITY_TYPES, MAX_IDENTITY_LENGTH
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile, ProfileErasure
from config.api_errors import RejectUnknownFieldsMixin

MEMBERSHIP_CHANGES_SHOWN = 50


# --- profiles --------------------------------------------------------------------------------


@extend_schema_field(
    {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {
                "type": {"type": "string", "enum": list(IDENTITY_TYPES)},
                "value": {"type": "string", "minLength": 1, "maxLength": MAX_IDENTITY_LENGTH},
            },
            "required": ["type", "value"],
        },
    }
)
class IdentitiesField(serializers.JSONField):
    """Any JSON: profiles.clean_identities checks it and names e.g. "identities[1].value"."""


@extend_schema_field(
    {
        "type": "object",  # allow_null adds null
        "description": "User attributes to set: a string, number, boolean or list of those each; null deletes one.",
        "additionalProperties": {
            "type": ["string", "number", "boolean", "array", "null"],
            "items": {"type": ["string", "number", "boolean"]},
        },
    }
)
class AttributesField(serializers.JSONField):
    """Any JSON: profiles.clean_attributes checks it and names e.g. "attributes.plan"."""


class ProfileUpsertSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """Find (or create) the profile its identities name, add the new identities, set the attributes."""

    identities = IdentitiesField()
    attributes = AttributesField(required=False, allow_null=True)


class IdentitySerializer(serializers.ModelSerializer):
    class Meta:
        model = Identity
        fields = ["type", "value"]


class MembershipChangeSerializer(serializers.ModelSerializer):
    class Meta:
        model = MembershipChange
        fields = ["audience", "kind", "reason", "at"]


class ProfileSerializer(serializers.ModelSerializer):
    """A profile; views prefetch `identities` (ordered) and `active_memberships` (see audiences.api)."""

    identities = IdentitySerializer(many=True, read_only=True)
    audiences = serializers.SerializerMethodField()

    class Meta:
        model = Profile
        fields = ["id", "identities", "attributes", "audiences"]

    def get_audiences(self, profile: Profile) -> list[int]:
        memberships = getattr(profile, "active_memberships", None)
        if memberships is None:
            memberships = profile.memberships.filter(audience__status=Audience.Status.ACTIVE)
        return sorted(m.audience_id for m in memberships)


class ProfileUpsertResultSerializer(ProfileSerializer):
    """The upserted profile, with the audiences it entered and left (the view sets both)."""

    entered = serializers.ListField(child=serializers.IntegerField(), read_only=True)
    left = serializers.ListField(child=serializers.IntegerField(), read_only=True)

    class Meta(ProfileSerializer.Meta):
        fields = [*ProfileSerializer.Meta.fields, "entered", "left"]


class ProfileDetailSerializer(ProfileSerializer):
    membership_changes = serializers.SerializerMethodField()

    class Meta(ProfileSerializer.Meta):
        fields = [*ProfileSerializer.Meta.fields, "membership_changes"]

    @extend_schema_field(MembershipChangeSerializer(many=True))
    def get_membership_changes(self, profile: Profile) -> list[dict[str, Any]]:
        # Newest first (MembershipChange.Meta.ordering); the full history can be long.
        changes = profile.membership_changes.all()[:MEMBERSHIP_CHANGES_SHOWN]
        return MembershipChangeSerializer(changes, many=True).data


# --- audiences -------------------------------------------------------------------------------


@extend_schema_field({"type": "string", "enum": list(Audience.Status.values)})
class AudienceStatusField(serializers.CharField):
    """Described as its choices; checked by the service, with the same message as everywhere."""


@extend_schema_field(
    {"type": "object", "description": "A criteria tree (docs/criteria.md): and / or / exclude groups of conditions."}
)
class CriteriaField(serializers.JSONField):
    """Any JSON: the service validates the tree and names the path of each problem."""


class AudienceSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Read and write. Writable fields are declared by hand so that DRF adds no validators of its
    own (max length, unique name): services.audience_create / audience_update decide."""

    name = serializers.CharField(allow_blank=True)
    external_name = serializers.CharField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    # Not a ChoiceField: the service checks the status with the same message everywhere.
    status = AudienceStatusField(
        required=False, help_text="draft (the default), active (computed and forwarded) or archived."
    )
    criteria = CriteriaField()
    size = serializers.SerializerMethodField()
    adds_24h = serializers.SerializerMethodField()
    drops_24h = serializers.SerializerMethodField()
    volatility = serializers.SerializerMethodField()

    class Meta:
        model = Audience
        fields = [
            "id",
            "name",
            "external_name",
            "description",
            "status",
            "criteria",
            "criteria_version",
            "last_calculated_at",
            "size",
            "adds_24h",
            "drops_24h",
            "volatility",
            "evaluation_error",
            "evaluation_failed_at",
            "recompute_error",
            "recompute_failed_at",
            "recompute_failures",
            "recompute_retry_at",
        ]
        read_only_fields = [
            "criteria_version",
            "last_calculated_at",
            # Failures recorded by real-time evaluation and recompute ("" / null when none); new criteria clear them.
            "evaluation_error",
            "evaluation_failed_at",
            "recompute_error",
            "recompute_failed_at",
            "recompute_failures",
            "recompute_retry_at",
        ]

    def _metrics(self, audience: Audience) -> selectors.AudienceMetrics:
        # A list view computes a whole page's metrics in one query and passes them in the context;
        # otherwise they are computed once for this audience and kept there for the other fields.
        metrics = self.context.setdefault("audience_metrics", {})
        if audience.pk not in metrics:
            metrics.update(selectors.audience_metrics([audience.pk]))
        return metrics[audience.pk]

    def get_size(self, audience: Audience) -> int:
        return self._metrics(audience).size

    def get_adds_24h(self, audience: Audience) -> int:
        return self._metrics(audience).adds_24h

    def get_drops_24h(self, audience: Audience) -> int:
        return self._metrics(audience).drops_24h

    def get_volatility(self, audience: Audience) -> float:
        return self._metrics(audience).volatility


# --- the criteria builder: estimate and names seen ---------------------------------------------


class AudienceEstimateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The estimate's request: criteria to count, and the audience being edited (for its cycle check)."""

    criteria = CriteriaField()
    audience = serializers.PrimaryKeyRelatedField(
        queryset=Audience.objects.all(),
        required=False,
        allow_null=True,
        help_text="The audience being edited, if any: criteria referring back to it are refused.",
    )


class EstimateSerializer(serializers.Serializer):
    """An audiences.estimates.Estimate."""

    available = serializers.BooleanField(help_text="False when no count could be made: `reason` says why.")
    count = serializers.IntegerField(allow_null=True, help_text="Profiles matching now.")
    total_profiles = serializers.IntegerField(allow_null=True)
    matches_everybody = serializers.BooleanField(help_text="The criteria hold no condition.")
    reason = serializers.CharField(allow_blank=True)
    warnings = serializers.ListField(
        child=serializers.CharField(), help_text="Names the criteria use that the data never held."
    )
    milliseconds = serializers.IntegerField()


class NamesQuerySerializer(serializers.Serializer):
    event = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=256,
        help_text="An event name: its attribute names are listed too (event_attributes).",
    )


class NameCountSerializer(serializers.Serializer):
    name = serializers.CharField()
    count = serializers.IntegerField(help_text="Profiles or events of the sample that have it.")


class NamesSeenSerializer(serializers.Serializer):
    """An audiences.estimates.NamesSeen: names in a bounded sample of the data, most frequent first."""

    attributes = NameCountSerializer(many=True, help_text="User attribute names of the newest profiles.")
    events = NameCountSerializer(many=True, help_text="Event names of the newest events.")
    event_attributes = NameCountSerializer(many=True, help_text="Attribute names of `event`, when asked for.")
    event = serializers.CharField(allow_null=True)
    sample_profiles = serializers.IntegerField()
    sample_events = serializers.IntegerField()


class HistoryEntrySerializer(serializers.Serializer):
    """One audiences.selectors.HistoryEntry: when and why a profile entered or left an audience."""

    audience = serializers.IntegerField(source="audience_id")
    audience_name = serializers.CharField()
    kind = serializers.CharField()
    reason = serializers.CharField()
    at = serializers.DateTimeField()


class AudienceMemberSerializer(serializers.ModelSerializer):
    """A member: its profile id, when it entered, and its identities (the view prefetches them)."""

    profile = serializers.IntegerField(source="profile_id", read_only=True)
    identities = IdentitySerializer(source="profile.identities", many=True, read_only=True)

    class Meta:
        model = AudienceMembership
        fields = ["profile", "entered_at", "identities"]


# --- erasures --------------------------------------------------------------------------------


class ErasureRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The identity by which to find the profile to erase (any of its identities will do)."""

    identity_type = serializers.ChoiceField(choices=IDENTITY_TYPES)
    identity_value = serializers.CharField(max_length=MAX_IDENTITY_LENGTH, trim_whitespace=False)


class ProfileErasureSerializer(serializers.ModelSerializer):
    """An erasure: what was deleted, and the partners' removes (`removing` until all are delivered)."""

    class Meta:
        model = ProfileErasure
        fields = [
            "id",
            "requested_at",
            "finished_at",
            "status",
            "source",
            "identities",
            "events",
            "audiences_left",
            "history",
            "identity_conflicts",
            "partner_removes",
            "partner_refused",
        ]
        read_only_fields = fields


class IdentityRemoveSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The identity a profile loses (checked and normalised by audiences.profiles.profile_identity_remove)."""

    type = serializers.JSONField(help_text="An identity type: email, customer, ...")
    value = serializers.JSONField(help_text="Its value, as given when it was added (normalised the same way).")


class ProfileMergeSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    profile = serializers.IntegerField(
        min_value=1,
        max_value=2**63 - 1,
        help_text="The id of the profile merged into this one (it is deleted once merged).",
    )


class ProfileMergeResultSerializer(serializers.Serializer):
    profile = ProfileDetailSerializer(help_text="The kept profile, after the merge.")
    merged_profile_id = serializers.IntegerField(help_text="The profile merged into it, now deleted.")
    identities_moved = serializers.IntegerField()
    events_moved = serializers.IntegerField()
    history_moved = serializers.IntegerField(help_text="Audience history entries moved.")
    entered = serializers.ListField(child=serializers.IntegerField(), help_text="Audiences the kept profile entered.")
    left = serializers.ListField(child=serializers.IntegerField(), help_text="Audiences the kept profile left.")
