"""API shapes for connections, their delivery attempts and rejected members, and the audience with its
connections."""

from __future__ import annotations

from rest_framework import serializers

from audiences.models import Audience
from audiences.serializers import AudienceSerializer
from config.api_errors import RejectUnknownFieldsMixin
from connections.models import Connection, ConnectionMember
from connections.selectors import connected_output_counts
from forwarding.models import ConnectionJob, DeliveryAttempt
from forwarding.selectors import connection_stats
from outputs.models import Output


class ConnectionSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Read, and create (audience, output, settings); forwarding.lifecycle decides the rest."""

    # An unknown id is a 400 naming the field ('Invalid pk "9" - object does not exist.').
    audience = serializers.PrimaryKeyRelatedField(queryset=Audience.objects.all())
    output = serializers.PrimaryKeyRelatedField(queryset=Output.objects.all())
    # Checked against the partner's connection settings by the service (errors name e.g. "list_id").
    settings = serializers.DictField(required=False, default=dict)
    stats = serializers.SerializerMethodField()
    fault_cause = serializers.CharField(
        read_only=True,
        help_text="Why a faulted connection faulted: `outage` (probed, resumes by itself when the partner "
        "answers), `refused` (credentials or settings: resume once fixed), or empty.",
    )

    class Meta:
        model = Connection
        fields = [
            "id",
            "audience",
            "output",
            "settings",
            "status",
            "status_reason",
            "status_changed_at",
            "fault_cause",
            "throttled_until",
            "failing_since",
            "last_delivered_at",
            "created_at",
            "stats",
        ]
        # Everything but what a create sends: forwarding.lifecycle decides the rest.
        read_only_fields = [f for f in fields if f not in ("id", "audience", "output", "settings", "stats")]
        # DRF would add a unique-together check on (audience, output); the service answers that
        # one, naming "output".
        validators: list = []

    def get_stats(self, connection: Connection) -> dict[str, int]:
        return connection_stats(connection).as_dict()


class ConnectionUpdateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """PUT / PATCH of a connection: its status (sending or paused, the pause / resume switch) and its
    settings (only those named change; a new partner-side target, e.g. Mailchimp's list id, is backfilled
    and the old one cleaned up where the output asks for it: POST /settings-preview/ says so beforehand).
    Audience and output are fixed at creation: sent back unchanged they are accepted, a different value is
    refused, naming the field."""

    status = serializers.ChoiceField(
        choices=[Connection.Status.SENDING, Connection.Status.PAUSED],
        help_text="sending (resume; clears a fault) or paused.",
    )
    audience = serializers.IntegerField(required=False, help_text="Fixed at creation.")
    output = serializers.IntegerField(required=False, help_text="Fixed at creation.")
    settings = serializers.DictField(
        required=False, help_text="Connection settings to change (the others keep their values)."
    )

    def to_internal_value(self, data: object) -> object:
        # What a read showed besides these fields may be sent back; it is ignored like read-only fields.
        if isinstance(data, dict):
            shown = set(ConnectionSerializer.Meta.fields) - set(self.fields)
            data = {key: value for key, value in data.items() if key not in shown}
        return super().to_internal_value(data)

    def _unchanged(self, name: str, value: object, current: object) -> object:
        if value != current:
            raise serializers.ValidationError(f"The {name} of a connection cannot be changed after it is created.")
        return value

    def validate_audience(self, value: int) -> int:
        return self._unchanged("audience", value, self.instance.audience_id)

    def validate_output(self, value: int) -> int:
        return self._unchanged("output", value, self.instance.output_id)


class ConnectionTestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()


class SettingsPreviewRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    settings = serializers.DictField(help_text="Connection settings to change (the others keep their values).")


class SettingsEditSerializer(serializers.Serializer):
    """What an edit of the settings does (before: POST /settings-preview/; after: PATCH's `settings_edit`)."""

    changed = serializers.ListField(child=serializers.CharField())
    target_changed = serializers.BooleanField(help_text="The partner-side audience (e.g. the Mailchimp list) changes.")
    backfill = serializers.IntegerField(help_text="Identities sent to the new target.")
    cleanup = serializers.IntegerField(help_text="Identities removed from the old target.")
    left_at_old_target = serializers.IntegerField(help_text="Identities the old target keeps (no clean-up asked).")
    cleanup_job = serializers.IntegerField(allow_null=True, help_text="The job removing them (GET .../jobs/{id}/).")
    partner_test = ConnectionTestResultSerializer(
        allow_null=True, help_text="The partner's answer about the new target (a refused one is not switched to)."
    )
    description = serializers.CharField()


class ResyncRequestSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    include_rejected = serializers.BooleanField(
        default=False, help_text="Send again the identities the partner refused for good (e.g. after a fix)."
    )


class ResyncResultSerializer(serializers.Serializer):
    adds_planned = serializers.IntegerField()
    removes_planned = serializers.IntegerField()


class ConnectionJobSerializer(serializers.ModelSerializer):
    """A reconcile or an old target's clean-up: its progress (`done` of `total` when known) and result."""

    class Meta:
        model = ConnectionJob
        fields = [
            "id",
            "kind",
            "status",
            "done",
            "total",
            "result",
            "error",
            "attempts",
            "created_at",
            "started_at",
            "finished_at",
        ]


class DeliveryAttemptSerializer(serializers.ModelSerializer):
    class Meta:
        model = DeliveryAttempt
        fields = [
            "id",
            "kind",
            "at",
            "duration_ms",
            "sent",
            "delivered",
            "rejected",
            "retried",
            "result",
            "error",
            "http_status",
            "error_code",
            "task_id",
        ]


class RejectionSerializer(serializers.ModelSerializer):
    class Meta:
        model = ConnectionMember
        fields = ["identity_type", "value", "reason", "updated_at"]


class ConnectedAudienceSerializer(AudienceSerializer):
    """An audience, with how many outputs it is connected to and its connections' ids."""

    connected_outputs = serializers.SerializerMethodField()
    connections = serializers.SerializerMethodField()

    class Meta(AudienceSerializer.Meta):
        fields = [*AudienceSerializer.Meta.fields, "connected_outputs", "connections"]

    def get_connected_outputs(self, audience: Audience) -> int:
        # A list view counts a whole page in one query and passes it in the context (see audience metrics).
        counts = self.context.setdefault("connected_outputs", {})
        if audience.pk not in counts:
            counts.update(connected_output_counts([audience.pk]))
        return counts[audience.pk]

    def get_connections(self, audience: Audience) -> list[int]:
        return sorted(c.pk for c in audience.connections.all())
