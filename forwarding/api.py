"""API views for connections (check the shape, call one service, serialize), and the audience resource
extended with its connections. Mounted by config/api_urls.py."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from audiences.api import AudienceViewSet
from audiences.models import Audience
from config.api_errors import ServiceErrorsMixin
from connections.models import Connection
from connections.selectors import connected_output_counts, rejected_members
from forwarding import lifecycle
from forwarding.serializers import (
    ConnectedAudienceSerializer,
    ConnectionFilterSerializer,
    ConnectionSerializer,
    ConnectionTestResultSerializer,
    DeliveryAttemptSerializer,
    RejectionSerializer,
)

ATTEMPTS_SHOWN = 50


class ConnectionViewSet(ServiceErrorsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    serializer_class = ConnectionSerializer
    # The output is read for every connection's stats (its partner's accepted identity types).
    queryset = Connection.objects.select_related("audience", "output")

    def filter_queryset(self, queryset: QuerySet[Connection]) -> QuerySet[Connection]:
        if self.action != "list":
            return queryset
        params = ConnectionFilterSerializer(data=self.request.query_params)
        params.is_valid(raise_exception=True)
        if "audience" in params.validated_data:
            queryset = queryset.filter(audience_id=params.validated_data["audience"])
        return queryset

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        connection = lifecycle.connection_create(**serializer.validated_data)
        return Response(self.get_serializer(connection).data, status=status.HTTP_201_CREATED)

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

    @action(detail=True, methods=["post"], serializer_class=ConnectionTestResultSerializer)
    def test(self, request: Request, pk: str | None = None) -> Response:
        # 200 either way: the partner's refusal is the answer, not an API error.
        ok, message = lifecycle.connection_test(connection=self.get_object())
        return Response(ConnectionTestResultSerializer({"ok": ok, "message": message}).data)

    @action(detail=True, methods=["get"], serializer_class=DeliveryAttemptSerializer)
    def attempts(self, request: Request, pk: str | None = None) -> Response:
        # Newest first (DeliveryAttempt.Meta.ordering); a fixed window, not paginated.
        attempts = self.get_object().attempts.all()[:ATTEMPTS_SHOWN]
        return Response(DeliveryAttemptSerializer(attempts, many=True).data)

    @action(detail=True, methods=["get"], serializer_class=RejectionSerializer)
    def rejections(self, request: Request, pk: str | None = None) -> Response:
        page = self.paginate_queryset(rejected_members(self.get_object()))
        return self.get_paginated_response(RejectionSerializer(page, many=True).data)


class ConnectedAudienceViewSet(AudienceViewSet):
    """/audiences/ with each audience's connections and connected outputs (audiences/ knows nothing of them)."""

    serializer_class = ConnectedAudienceSerializer
    queryset = Audience.objects.prefetch_related("connections")

    def page_context(self, page: list[Audience]) -> dict[str, Any]:
        return {**super().page_context(page), "connected_outputs": connected_output_counts(a.pk for a in page)}
