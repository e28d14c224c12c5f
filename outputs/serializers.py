"""API shapes for partners and outputs.

Secrets are write-only: `settings` is read back without them (only `secrets_set` says which
are stored), so no response ever carries an API key or token.
"""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from config.api_errors import RejectUnknownFieldsMixin
from outputs.models import Output
from outputs.partners.base import Partner
from outputs.partners.registry import get_partner_class


class PartnerSerializer(serializers.Serializer):
    """One partner class of outputs.partners.registry.PARTNERS, as the directory shows it."""

    key = serializers.CharField(read_only=True)
    name = serializers.CharField(read_only=True)
    description = serializers.CharField(read_only=True)
    pattern = serializers.SerializerMethodField(help_text="list or attribute")
    accepted_identity_types = serializers.SerializerMethodField()
    delivery_mode = serializers.SerializerMethodField(help_text="realtime or bulk")
    capabilities = serializers.SerializerMethodField(
        help_text="Everything the partner declares: its pattern, its rhythm, and creates_audience, lists_members, "
        "reports_count when it can."
    )
    upload_criteria = serializers.SerializerMethodField(
        help_text="Bulk partners: an upload is due after wait_seconds or at messages waiting, whichever comes first."
    )
    batch_limit = serializers.IntegerField(read_only=True)
    configuration_settings = serializers.SerializerMethodField()
    connection_settings = serializers.SerializerMethodField()

    def get_pattern(self, partner: type[Partner]) -> str:
        return str(partner.pattern())

    def get_delivery_mode(self, partner: type[Partner]) -> str:
        return str(partner.rhythm())

    def get_capabilities(self, partner: type[Partner]) -> list[str]:
        return sorted(str(c) for c in partner.capabilities)

    def get_upload_criteria(self, partner: type[Partner]) -> dict[str, int] | None:
        criteria = partner.default_upload_criteria
        return criteria.describe() if criteria else None

    def get_accepted_identity_types(self, partner: type[Partner]) -> list[str]:
        return sorted(partner.accepted_identity_types)

    def get_configuration_settings(self, partner: type[Partner]) -> list[dict[str, Any]]:
        return [s.describe() for s in partner.configuration_settings]

    def get_connection_settings(self, partner: type[Partner]) -> list[dict[str, Any]]:
        return [s.describe() for s in partner.connection_settings]


class OutputSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Read and write. Settings are validated by the partner's schema in outputs.services."""

    # No DRF max length / unique validators: outputs.services checks the name.
    name = serializers.CharField(allow_blank=True)
    partner = serializers.CharField(source="partner_key")
    # Write: every configuration setting, secrets included (a blank secret keeps the stored one).
    settings = serializers.DictField(required=False, default=dict)
    secrets_set = serializers.SerializerMethodField()

    class Meta:
        model = Output
        fields = ["id", "name", "partner", "settings", "secrets_set", "created_at"]
        read_only_fields = ["created_at"]

    def validate_partner(self, value: str) -> str:
        # A key of the registry (the model field has no choices: a new partner needs no migration).
        try:
            get_partner_class(value)
        except LookupError as exc:
            raise serializers.ValidationError(str(exc)) from None
        # Settings and what the partner holds belong to one partner; switching makes no sense.
        if self.instance is not None and value != self.instance.partner_key:
            raise serializers.ValidationError("The partner of an output cannot be changed; create another output.")
        return value

    def get_secrets_set(self, output: Output) -> list[str]:
        return output.secret_names_set()

    def to_representation(self, instance: Output) -> dict[str, Any]:
        data = super().to_representation(instance)
        # Output.settings holds no secrets; filtering again keeps it so if that ever changes.
        secret_names = instance.partner_class.secret_setting_names()
        data["settings"] = {k: v for k, v in instance.settings.items() if k not in secret_names}
        return data
