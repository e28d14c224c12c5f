"""API shapes for profiles and audiences.

Request serializers check the shape only (types, presence); the rules (identity formats,
criteria, name lengths and uniqueness) live in audiences.profiles and audiences.services, which name the field
of every error, so they are not repeated here.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers

from audiences import selectors
from audiences.identities import normalise_identity
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile
from config.api_errors import RejectUnknownFieldsMixin

MEMBERSHIP_CHANGES_SHOWN = 50


# --- profiles --------------------------------------------------------------------------------


class ProfileUpsertSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    # Any JSON: profiles.clean_identities / clean_attributes check it and name e.g. "identities[1].value".
    identities = serializers.JSONField()
    attributes = serializers.JSONField(required=False, allow_null=True)


class ProfileLookupSerializer(serializers.Serializer):
    """?identity_type=email&identity_value=A@x.com: the value is normalised as it is stored."""

    identity_type = serializers.CharField(required=False)
    identity_value = serializers.CharField(required=False, trim_whitespace=False)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if not attrs:
            return attrs
        for name in ("identity_type", "identity_value"):
            if name not in attrs:
                raise serializers.ValidationError({name: ["Give identity_type and identity_value together."]})
        try:
            attrs["identity_value"] = normalise_identity(attrs["identity_type"], attrs["identity_value"])
        except DjangoValidationError as exc:
            field = "identity_type" if exc.code == "unknown_type" else "identity_value"
            raise serializers.ValidationError({field: exc.messages}) from None
        return attrs


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


class ProfileDetailSerializer(ProfileSerializer):
    membership_changes = serializers.SerializerMethodField()

    class Meta(ProfileSerializer.Meta):
        fields = [*ProfileSerializer.Meta.fields, "membership_changes"]

    def get_membership_changes(self, profile: Profile) -> list[dict[str, Any]]:
        # Newest first (MembershipChange.Meta.ordering); the full history can be long.
        changes = profile.membership_changes.all()[:MEMBERSHIP_CHANGES_SHOWN]
        return MembershipChangeSerializer(changes, many=True).data


# --- audiences -------------------------------------------------------------------------------


class AudienceEstimateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """The estimate's request: criteria to count, and the audience being edited (for its cycle check)."""

    criteria = serializers.JSONField()
    audience = serializers.PrimaryKeyRelatedField(queryset=Audience.objects.all(), required=False, allow_null=True)


class AudienceSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Read and write. Writable fields are declared by hand so that DRF adds no validators of its
    own (max length, unique name): services.audience_create / audience_update decide."""

    name = serializers.CharField(allow_blank=True)
    external_name = serializers.CharField(required=False, allow_blank=True)
    description = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    # Not a ChoiceField: the service checks the status with the same message everywhere.
    status = serializers.CharField(required=False)
    criteria = serializers.JSONField()
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
        ]
        read_only_fields = ["criteria_version", "last_calculated_at"]

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


class HistoryEntrySerializer(serializers.Serializer):
    """One audiences.selectors.HistoryEntry: when and why a profile entered or left an audience."""

    audience = serializers.IntegerField(source="audience_id")
    audience_name = serializers.CharField()
    kind = serializers.CharField()
    reason = serializers.CharField()
    at = serializers.DateTimeField()


class AudienceMemberSerializer(serializers.ModelSerializer):
    profile = serializers.IntegerField(source="profile_id", read_only=True)

    class Meta:
        model = AudienceMembership
        fields = ["profile", "entered_at"]
