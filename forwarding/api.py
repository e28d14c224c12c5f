"""API views for connections: check the shape, call one service, serialize."""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from config.api_errors import ServiceErrorsMixin
from connections.models import Connection, ConnectionMember
from forwarding import lifecycle as services
from forwarding.serializers import (
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
        connection = services.connection_create(**serializer.validated_data)
        return Response(self.get_serializer(connection).data, status=status.HTTP_201_CREATED)

    def destroy(self, request: Request, pk: str | None = None) -> Response:
        # Accepted, not done: a task cleans up at the partner, then deletes the row.
        connection = services.connection_delete(connection=self.get_object())
        return Response(self.get_serializer(connection).data, status=status.HTTP_202_ACCEPTED)

    @action(detail=True, methods=["post"])
    def pause(self, request: Request, pk: str | None = None) -> Response:
        connection = services.connection_pause(connection=self.get_object())
        return Response(self.get_serializer(connection).data)

    @action(detail=True, methods=["post"])
    def resume(self, request: Request, pk: str | None = None) -> Response:
        connection = services.connection_resume(connection=self.get_object())
        return Response(self.get_serializer(connection).data)

    @action(detail=True, methods=["post"], serializer_class=ConnectionTestResultSerializer)
    def test(self, request: Request, pk: str | None = None) -> Response:
        # 200 either way: the partner's refusal is the answer, not an API error.
        ok, message = services.connection_test(connection=self.get_object())
        return Response(ConnectionTestResultSerializer({"ok": ok, "message": message}).data)

    @action(detail=True, methods=["get"], serializer_class=DeliveryAttemptSerializer)
    def attempts(self, request: Request, pk: str | None = None) -> Response:
        # Newest first (DeliveryAttempt.Meta.ordering); a fixed window, not paginated.
        attempts = self.get_object().attempts.all()[:ATTEMPTS_SHOWN]
        return Response(DeliveryAttemptSerializer(attempts, many=True).data)

    @action(detail=True, methods=["get"], serializer_class=RejectionSerializer)
    def rejections(self, request: Request, pk: str | None = None) -> Response:
        rejected = ConnectionMember.objects.filter(
            connection=self.get_object(), state=ConnectionMember.State.REJECTED
        ).order_by("-updated_at", "-id")
        page = self.paginate_queryset(rejected)
        return self.get_paginated_response(RejectionSerializer(page, many=True).data)
