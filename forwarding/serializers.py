"""API shapes for connections, their delivery attempts and rejected members, and the audience with its
connections."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from audiences.models import Audience
from audiences.serializers import AudienceSerializer
from config.api_errors import RejectUnknownFieldsMixin
from connections.models import UPLOAD_MESSAGES_MAX, UPLOAD_WAIT_MINUTES_MAX, Connection, ConnectionMember
from connections.selectors import connected_output_counts
from forwarding import bulk
from forwarding.models import ConnectionJob, DeliveryAttempt, Upload
from forwarding.selectors import connection_stats
from outputs.models import Output
from outputs.partners.base import UploadCriteria


class UploadCriteriaSerializer(serializers.Serializer):
    wait_minutes = serializers.IntegerField(help_text="Upload once the oldest waiting change has waited this long.")
    messages = serializers.IntegerField(help_text="Upload as soon as this many changes wait.")


class UploadSummarySerializer(serializers.Serializer):
    trigger = serializers.ChoiceField(choices=Upload.Trigger.choices)
    started_at = serializers.DateTimeField()
    finished_at = serializers.DateTimeField(allow_null=True)
    running = serializers.BooleanField(help_text="Still sending: the counts are its progress so far.")
    outcome = serializers.ChoiceField(
        choices=[("", "running"), *Upload.Outcome.choices],
        help_text="Empty while running; `interrupted`: its worker stopped mid-upload (the next upload sends "
        "what it had not recorded).",
    )
    detail = serializers.CharField(help_text="The error or the reason it stopped, if any.")
    sent = serializers.IntegerField()
    delivered = serializers.IntegerField()
    rejected = serializers.IntegerField()
    retried = serializers.IntegerField()


class UploadStatusSerializer(serializers.Serializer):
    criteria = UploadCriteriaSerializer(help_text="In force: the connection's own values, else the partner's.")
    default_criteria = UploadCriteriaSerializer(help_text="The partner's default upload criteria.")
    waiting = serializers.IntegerField(help_text="The backlog: changes waiting for the next upload.")
    oldest_waiting_since = serializers.DateTimeField(allow_null=True)
    next_upload_due_at = serializers.DateTimeField(
        allow_null=True,
        help_text="When the upload is due by its criteria (beat looks every `check_interval_seconds`; the count "
        "criterion queues it at once). Null: nothing waiting, or the connection is not sending.",
    )
    check_interval_seconds = serializers.IntegerField()
    last_upload = UploadSummarySerializer(allow_null=True)


def _criteria(criteria: UploadCriteria) -> dict[str, int]:
    return {"wait_minutes": int(criteria.wait.total_seconds() // 60), "messages": criteria.messages}


class ConnectionSerializer(RejectUnknownFieldsMixin, serializers.ModelSerializer):
    """Read, and create (audience, output, settings); forwarding.lifecycle decides the rest."""

    # An unknown id is a 400 naming the field ('Invalid pk "9" - object does not exist.').
    audience = serializers.PrimaryKeyRelatedField(queryset=Audience.objects.all())
    output = serializers.PrimaryKeyRelatedField(queryset=Output.objects.all())
    # Checked against the partner's connection settings by the service (errors name e.g. "list_id").
    settings = serializers.DictField(required=False, default=dict)
    stats = serializers.SerializerMethodField()
    upload = serializers.SerializerMethodField(
        help_text="A bulk connection's uploads: its criteria, backlog, next upload and last upload (null: the "
        "partner receives changes in real time)."
    )
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
            "upload_wait_minutes",
            "upload_messages",
            "upload",
            "created_at",
            "stats",
        ]
        # Everything but what a create sends: forwarding.lifecycle decides the rest.
        read_only_fields = [f for f in fields if f not in ("id", "audience", "output", "settings", "stats", "upload")]
        # DRF would add a unique-together check on (audience, output); the service answers that
        # one, naming "output".
        validators: list = []

    def get_stats(self, connection: Connection) -> dict[str, int]:
        return connection_stats(connection).as_dict()

    @extend_schema_field(UploadStatusSerializer(allow_null=True))
    def get_upload(self, connection: Connection) -> dict[str, Any] | None:
        state = bulk.upload_status(connection)
        if state is None:
            return None
        last = state.last_upload
        return {
            "criteria": _criteria(state.criteria),
            "default_criteria": _criteria(state.default),
            "waiting": state.waiting,
            "oldest_waiting_since": state.oldest_waiting_since,
            "next_upload_due_at": state.next_upload_due_at,
            "check_interval_seconds": state.check_interval_seconds,
            "last_upload": UploadSummarySerializer(last).data if last is not None else None,
        }


class ConnectionUpdateSerializer(RejectUnknownFieldsMixin, serializers.Serializer):
    """PUT / PATCH of a connection: its status (sending or paused, the pause / resume switch), its
    settings (only those named change; a new partner-side target, e.g. Mailchimp's list id, is backfilled
    and the old one cleaned up where the output asks for it: POST /settings-preview/ says so beforehand),
    and, for a bulk connection, its upload criteria. Audience and output are fixed at creation: sent back
    unchanged they are accepted, a different value is refused, naming the field."""

    status = serializers.ChoiceField(
        choices=[Connection.Status.SENDING, Connection.Status.PAUSED],
        help_text="sending (resume; clears a fault) or paused.",
    )
    upload_wait_minutes = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=UPLOAD_WAIT_MINUTES_MAX,
        help_text="A bulk connection's own wait criterion, in minutes (null: the partner's default).",
    )
    upload_messages = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=UPLOAD_MESSAGES_MAX,
        help_text="A bulk connection's own count criterion, in changes waiting (null: the partner's default).",
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


class FunnelLossSerializer(serializers.Serializer):
    reason = serializers.CharField(help_text="Why, e.g. no identity of an accepted type, or the partner's reason.")
    count = serializers.IntegerField()


class FunnelStageSerializer(serializers.Serializer):
    key = serializers.ChoiceField(
        choices=["audience", "with_accepted_identity", "accepted_identities", "valid", "delivered", "accepted"]
    )
    label = serializers.CharField()
    count = serializers.IntegerField()
    unit = serializers.ChoiceField(choices=["members", "identities"])
    lost = FunnelLossSerializer(many=True, help_text="What the step loses from the one before it, and why.")
    by_type = serializers.DictField(child=serializers.IntegerField(), help_text="Counts per identity type.")


class PartnerCountSerializer(serializers.Serializer):
    supported = serializers.BooleanField(help_text="The partner reports its own count of the audience.")
    available = serializers.BooleanField()
    count = serializers.IntegerField(allow_null=True)
    reason = serializers.CharField(allow_blank=True, help_text="Why the count is unavailable.")
    note = serializers.CharField(allow_blank=True, help_text="What the partner's count counts.")


class IdentityFunnelSerializer(serializers.Serializer):
    connection_id = serializers.IntegerField()
    partner = serializers.CharField(help_text="The partner's key, e.g. mailchimp.")
    partner_name = serializers.CharField()
    accepted_identity_types = serializers.ListField(child=serializers.CharField())
    stages = FunnelStageSerializer(many=True)
    rejected = serializers.IntegerField(help_text="Valid identities of members the partner refused.")
    rejection_reasons = FunnelLossSerializer(many=True, help_text="The partner's reasons, most frequent first.")
    partner_count = PartnerCountSerializer()


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
