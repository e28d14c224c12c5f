"""API shapes for connections, their delivery attempts and rejected members, and the audience with its
connections."""

from __future__ import annotations

from rest_framework import serializers

from audiences.models import Audience
from audiences.serializers import AudienceSerializer
from config.api_errors import RejectUnknownFieldsMixin
from connections.models import Connection, ConnectionMember
from connections.selectors import connected_output_counts
from forwarding.models import DeliveryAttempt
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
            "last_delivered_at",
            "created_at",
            "stats",
        ]
        read_only_fields = ["status", "status_reason", "status_changed_at", "last_delivered_at", "created_at"]
        # DRF would add a unique-together check on (audience, output); the service answers that
        # one, naming "output".
        validators: list = []

    def get_stats(self, connection: Connection) -> dict[str, int]:
        return connection_stats(connection).as_dict()


class ConnectionFilterSerializer(serializers.Serializer):
    """Query parameters of the connection list."""

    audience = serializers.IntegerField(required=False, min_value=1)


class ConnectionTestResultSerializer(serializers.Serializer):
    ok = serializers.BooleanField()
    message = serializers.CharField()


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
