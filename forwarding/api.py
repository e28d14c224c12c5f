"""API views for connections (check the shape, call one service, serialize), and the audience resource
extended with its connections. Mounted by config/api_urls.py.

PUT and PATCH edit a connection's status (sending / paused, the same switch as POST /pause/ and
/resume/), its settings (POST /settings-preview/ says what an edit would do first) and a bulk
connection's upload criteria (`upload_wait_minutes`, `upload_messages`, null for the partner's default;
forwarding/bulk.py). The audience and the output are fixed at creation; sending them back unchanged is
fine, a different value is a 400. POST /resync/ plans the difference with our records; POST /reconcile/
queues a job (202) that reads what the partner holds and repairs drift, its progress at GET /jobs/{job_id}/.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.db import transaction
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.request import Request
from rest_framework.response import Response

from audiences.api import AudienceViewSet
from audiences.identities import IDENTITY_TYPE_CHOICES
from audiences.models import Audience
from config.api_lists import UtcDateTimeFilter
from config.api_schema import error_response
from config.api_views import ObjectLookupMixin
from config.roles import PAUSE_CONNECTION, TEST_CONNECTION
from connections.models import Connection, ConnectionMember
from connections.selectors import connected_output_counts, rejected_members
from forwarding import bulk, lifecycle, sync
from forwarding.funnel import identity_funnel
from forwarding.models import ConnectionJob, DeliveryAttempt
from forwarding.serializers import (
    ConnectedAudienceSerializer,
    ConnectionJobSerializer,
    ConnectionSerializer,
    ConnectionTestResultSerializer,
    ConnectionUpdateSerializer,
    DeliveryAttemptSerializer,
    IdentityFunnelSerializer,
    RejectionSerializer,
    ResyncRequestSerializer,
    ResyncResultSerializer,
    SettingsEditSerializer,
    SettingsPreviewRequestSerializer,
)
from outputs.api import partner_filter
from outputs.models import Output

VIEW = "connections.view_connection"
CHANGE = "connections.change_connection"
# PUT / PATCH status, like the pause and resume buttons.
STATUS_SWITCH = {
    Connection.Status.SENDING: lifecycle.connection_resume,
    Connection.Status.PAUSED: lifecycle.connection_pause,
}


class ConnectionFilter(filters.FilterSet):
    audience = filters.ModelChoiceFilter(queryset=Audience.objects.all())
    output = filters.ModelChoiceFilter(queryset=Output.objects.all())
    status = filters.ChoiceFilter(choices=Connection.Status.choices)
    partner = partner_filter("output__partner_key")

    class Meta:
        model = Connection
        fields = ["audience", "output", "status", "partner"]


class DeliveryAttemptFilter(filters.FilterSet):
    result = filters.ChoiceFilter(choices=DeliveryAttempt.Result.choices, help_text="The outcome of the attempt.")
    kind = filters.ChoiceFilter(choices=[("batch", "batch"), ("cleanup", "cleanup"), ("erasure", "erasure")])
    at_after = UtcDateTimeFilter(field_name="at", lookup_expr="gte", help_text="Made at or after (ISO 8601).")
    at_before = UtcDateTimeFilter(field_name="at", lookup_expr="lt", help_text="Made before (ISO 8601).")

    class Meta:
        model = DeliveryAttempt
        fields = ["result", "kind", "at_after", "at_before"]


class RejectionFilter(filters.FilterSet):
    identity_type = filters.ChoiceFilter(choices=IDENTITY_TYPE_CHOICES)

    class Meta:
        model = ConnectionMember
        fields = ["identity_type"]


@extend_schema_view(
    create=extend_schema(
        examples=[
            OpenApiExample(
                "Mailchimp list",
                request_only=True,
                value={"audience": 1, "output": 1, "settings": {"list_id": "abc123"}},
            )
        ]
    ),
    update=extend_schema(
        request=ConnectionUpdateSerializer,
        description="Switch the status (status required; a faulted connection does not pause), edit settings "
        "(connections.change_connection; the answer then has `settings_edit`: what the edit did), and set a bulk "
        "connection's upload criteria (a real-time one has none: a 400 naming the field).",
    ),
    partial_update=extend_schema(
        request=ConnectionUpdateSerializer,
        description="Switch the status (a faulted connection does not pause), edit settings (only those "
        "named change; a new Mailchimp list is backfilled and the old one cleaned up where the output asks for "
        "it; the answer then has `settings_edit`), and set a bulk connection's upload criteria (a real-time one "
        "has none: a 400 naming the field).",
    ),
    settings_preview=extend_schema(
        request=SettingsPreviewRequestSerializer,
        responses={200: SettingsEditSerializer, 400: error_response("400", "A setting is not valid (named).")},
        summary="What editing these settings would do (nothing is saved)",
    ),
    resync=extend_schema(
        request=ResyncRequestSerializer,
        responses={200: ResyncResultSerializer, 400: error_response("400", "The connection is being deleted.")},
        summary="Plan only the difference between the audience and what our records say the partner holds",
    ),
    reconcile=extend_schema(
        request=None,
        responses={
            202: OpenApiResponse(ConnectionJobSerializer, description="Queued (or the one already queued)."),
            400: error_response("400", "The partner cannot list its members, or the connection is ending."),
        },
        summary="Read what the partner holds and repair drift made there (a job; see /jobs/)",
    ),
    jobs=extend_schema(summary="Reconciles and clean-ups, newest first", responses=ConnectionJobSerializer(many=True)),
    job=extend_schema(summary="One reconcile or clean-up: its progress and result", responses=ConnectionJobSerializer),
    destroy=extend_schema(
        responses={
            202: OpenApiResponse(
                ConnectionSerializer, description="Ending: the partner is cleaned up, then the connection goes."
            ),
            400: error_response("400", "The connection is already being deleted."),
        }
    ),
    pause=extend_schema(
        request=None,
        summary="Pause: changes are kept and sent on resume",
        description="Only a sending connection pauses: a faulted one is a 400 naming `status` (resume it instead).",
    ),
    resume=extend_schema(request=None, summary="Resume: clears a fault and sends what is pending"),
    resume_if_test_passes=extend_schema(
        request=None,
        summary="Resume once the partner's connection test passes (after fixing a key)",
        description="The test fails: a 400 naming `status` with the partner's answer, and nothing changes.",
    ),
    upload_now=extend_schema(
        request=None,
        summary="Upload a bulk connection's waiting changes now, whatever its upload criteria",
        description="Queues the upload and answers 202 with the connection. A real-time connection, one that is "
        "not sending, or one with nothing waiting: a 409 saying so.",
        responses={
            202: OpenApiResponse(ConnectionSerializer, description="The upload is queued."),
            409: error_response("409", "Not a bulk connection, not sending, or nothing waiting."),
        },
    ),
    test=extend_schema(request=None, summary="Ask the partner whether the connection works (200 either way)"),
    attempts=extend_schema(summary="Delivery attempts, newest first", responses=DeliveryAttemptSerializer(many=True)),
    rejections=extend_schema(summary="Identities the partner refused", responses=RejectionSerializer(many=True)),
    funnel=extend_schema(
        summary="The identity funnel: from the audience's size to what the partner holds",
        description=(
            "Audience size → members with an identity of an accepted type → accepted identities → valid after the "
            "partner's normalisation → delivered → accepted by the partner, each step with what it loses and why "
            "(the partner's rejection reasons grouped and counted, addresses masked), and the partner's own count "
            "where it reports one (asked with a 3 s deadline, kept 60 s; `available: false` with the reason when "
            "it cannot be had)."
        ),
        responses=IdentityFunnelSerializer,
    ),
)
class ConnectionViewSet(ObjectLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ConnectionSerializer
    # The output is read for every connection's stats (its partner's accepted identity types).
    queryset = Connection.objects.select_related("audience", "output")
    filterset_class = ConnectionFilter
    search_fields = ["audience__name", "output__name"]
    ordering_fields = ["id", "created_at", "status", "status_changed_at", "last_delivered_at"]
    permissions_by_action = {
        "list": (VIEW,),
        "retrieve": (VIEW,),
        "create": ("connections.add_connection",),
        "update": (VIEW, PAUSE_CONNECTION),
        "partial_update": (VIEW, PAUSE_CONNECTION),
        "destroy": ("connections.delete_connection",),
        "pause": (VIEW, PAUSE_CONNECTION),
        "resume": (VIEW, PAUSE_CONNECTION),
        "resume_if_test_passes": (VIEW, PAUSE_CONNECTION, TEST_CONNECTION),
        # Starting an upload is part of the sending switch, as the upload criteria are (PUT / PATCH).
        "upload_now": (VIEW, PAUSE_CONNECTION),
        "test": (VIEW, TEST_CONNECTION),
        "attempts": (VIEW, "forwarding.view_deliveryattempt"),
        # Rejected members are identities: personal data.
        "rejections": (VIEW, "connections.view_connectionmember"),
        # Counts and reasons, the partner's quoted addresses masked: what the connection's figures show.
        "funnel": (VIEW,),
        "settings_preview": (VIEW,),
        "resync": (VIEW, CHANGE),
        "reconcile": (VIEW, CHANGE),
        "jobs": (VIEW,),
        "job": (VIEW,),
    }

    def _connection(self) -> Connection:
        """The connection of a nested list (/attempts/, /rejections/), whose queryset is not connections."""
        return get_object_or_404(Connection.objects.all(), pk=self.kwargs["pk"])

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        connection = lifecycle.connection_create(**serializer.validated_data)
        return Response(self.get_serializer(connection).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        """PUT (status required) / PATCH: switch the status between sending and paused, edit settings."""
        connection = self.get_object()
        body = ConnectionUpdateSerializer(connection, data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        # Sent back unchanged (a real-time connection's nulls, as read) is fine, as for the fixed fields.
        criteria = {
            name: value
            for name, value in body.validated_data.items()
            if name in ("upload_wait_minutes", "upload_messages") and value != getattr(connection, name)
        }
        edit = None
        if "settings" in body.validated_data and not request.user.has_perm(CHANGE):
            raise PermissionDenied("Editing a connection's settings needs connections.change_connection.")
        if "settings" in body.validated_data:
            # First, and in its own transactions: a target change holds delivery back and awaits the batch in
            # flight, which must see the hold committed. Refused settings change nothing else.
            edit = lifecycle.connection_settings_update(connection=connection, settings=body.validated_data["settings"])
            connection.refresh_from_db()
        wanted = body.validated_data.get("status", connection.status)
        # Refused criteria or status change neither.
        with transaction.atomic():
            if criteria:
                connection = bulk.connection_set_upload_criteria(connection=connection, values=criteria)
            if wanted != connection.status:
                connection = STATUS_SWITCH[wanted](connection=connection)
        data = self.get_serializer(connection).data
        if edit is not None:
            data = {**data, "settings_edit": SettingsEditSerializer(edit.as_dict()).data}
        return Response(data)

    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self.update(request, pk, partial=True)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        # Accepted, not done: a task cleans up at the partner, then deletes the row.
        connection = lifecycle.connection_delete(connection=self.get_object())
        return Response(self.get_serializer(connection).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        connection = lifecycle.connection_pause(connection=self.get_object())
        return Response(self.get_serializer(connection).data)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        connection = lifecycle.connection_resume(connection=self.get_object())
        return Response(self.get_serializer(connection).data)

    @action(detail=True, methods=["post"], url_path="resume-if-test-passes")
    def resume_if_test_passes(self, request: Request, pk: str | None = None) -> Response:
        connection = lifecycle.connection_resume_if_test_passes(connection=self.get_object())
        return Response(self.get_serializer(connection).data)

    @action(detail=True, methods=["post"], url_path="upload-now")
    def upload_now(self, request: Request, pk: str | None = None) -> Response:
        connection = self.get_object()
        bulk.upload_now(connection=connection)
        return Response(self.get_serializer(connection).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"], serializer_class=ConnectionTestResultSerializer)
    def test(self, request: Request, pk: str | None = None) -> Response:
        # 200 either way: the partner's refusal is the answer, not an API error.
        ok, message = lifecycle.connection_test(connection=self.get_object())
        return Response(ConnectionTestResultSerializer({"ok": ok, "message": message}).data)

    @action(detail=True, methods=["post"], url_path="settings-preview", serializer_class=SettingsEditSerializer)
    def settings_preview(self, request: Request, pk: str | None = None) -> Response:
        body = SettingsPreviewRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        edit = lifecycle.connection_settings_preview(
            connection=self.get_object(), settings=body.validated_data["settings"]
        )
        return Response(SettingsEditSerializer(edit.as_dict()).data)

    @action(detail=True, methods=["post"], serializer_class=ResyncResultSerializer)
    def resync(self, request: Request, pk: str | None = None) -> Response:
        body = ResyncRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = sync.connection_resync(connection=self.get_object(), **body.validated_data)
        return Response(ResyncResultSerializer(result.as_dict()).data)

    @action(detail=True, methods=["post"], serializer_class=ConnectionJobSerializer)
    def reconcile(self, request: Request, pk: str | None = None) -> Response:
        connection = self.get_object()
        job = sync.connection_reconcile_start(connection=connection)
        location = request.build_absolute_uri(f"{request.path.rstrip('/').rsplit('/', 1)[0]}/jobs/{job.pk}/")
        return Response(
            ConnectionJobSerializer(job).data, status=status.HTTP_202_ACCEPTED, headers={"Location": location}
        )

    @action(
        detail=True,
        methods=["get"],
        serializer_class=ConnectionJobSerializer,
        queryset=ConnectionJob.objects.all(),
        filterset_class=None,
        search_fields=None,
        ordering_fields=["created_at"],
    )
    def jobs(self, request: Request, pk: str | None = None) -> Response:
        page = self.paginate_queryset(self.get_queryset().filter(connection=self._connection()))
        return self.get_paginated_response(ConnectionJobSerializer(page, many=True).data)

    @action(
        detail=True,
        methods=["get"],
        url_path=r"jobs/(?P<job_id>[0-9]+)",
        serializer_class=ConnectionJobSerializer,
        queryset=ConnectionJob.objects.all(),
        filterset_class=None,
        search_fields=None,
    )
    def job(self, request: Request, pk: str | None = None, job_id: str | None = None) -> Response:
        job = get_object_or_404(ConnectionJob.objects.all(), pk=job_id, connection=self._connection())
        return Response(ConnectionJobSerializer(job).data)

    @action(
        detail=True,
        methods=["get"],
        serializer_class=DeliveryAttemptSerializer,
        queryset=DeliveryAttempt.objects.all(),
        filterset_class=DeliveryAttemptFilter,
        search_fields=None,
        ordering_fields=["at", "duration_ms", "sent"],
    )
    def attempts(self, request: Request, pk: str | None = None) -> Response:
        """The partner calls made for this connection, newest first (DeliveryAttempt.Meta.ordering)."""
        attempts = self.get_queryset().filter(connection=self._connection())
        page = self.paginate_queryset(self.filter_queryset(attempts))
        return self.get_paginated_response(DeliveryAttemptSerializer(page, many=True).data)

    @action(
        detail=True,
        methods=["get"],
        serializer_class=RejectionSerializer,
        queryset=ConnectionMember.objects.all(),
        filterset_class=RejectionFilter,
        search_fields=None,
        ordering_fields=["updated_at"],
    )
    def rejections(self, request: Request, pk: str | None = None) -> Response:
        """The identities the partner refused, with its reasons, newest first."""
        page = self.paginate_queryset(self.filter_queryset(rejected_members(self._connection())))
        return self.get_paginated_response(RejectionSerializer(page, many=True).data)

    @action(detail=True, methods=["get"], serializer_class=IdentityFunnelSerializer)
    def funnel(self, request: Request, pk: str | None = None) -> Response:
        """The connection's identity funnel (forwarding/funnel.py)."""
        return Response(IdentityFunnelSerializer(identity_funnel(self.get_object())).data)


class ConnectedAudienceViewSet(AudienceViewSet):
    """/audiences/ with each audience's connections and connected outputs (audiences/ knows nothing of them)."""

    serializer_class = ConnectedAudienceSerializer
    queryset = Audience.objects.prefetch_related("connections")

    def page_context(self, page: list[Audience]) -> dict[str, Any]:
        return {**super().page_context(page), "connected_outputs": connected_output_counts(a.pk for a in page)}
