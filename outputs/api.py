"""API views for the partner directory and outputs: check the shape, call one service, serialize."""

from __future__ import annotations

from django.db.models import ProtectedError
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from config.api_errors import ServiceErrorsMixin
from outputs import services
from outputs.models import Output
from outputs.partners.registry import PARTNERS
from outputs.serializers import OutputSerializer, PartnerSerializer


class PartnerViewSet(viewsets.ViewSet):
    """The partner directory: a handful of classes, so one unpaginated list."""

    def list(self, request: Request) -> Response:
        partners = [PARTNERS[key] for key in sorted(PARTNERS)]
        return Response(PartnerSerializer(partners, many=True).data)


class OutputViewSet(
    ServiceErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = OutputSerializer
    queryset = Output.objects.all()

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        output = services.output_create(
            name=serializer.validated_data["name"],
            partner_key=serializer.validated_data["partner_key"],
            settings=serializer.validated_data["settings"],
        )
        return Response(self.get_serializer(output).data, status=status.HTTP_201_CREATED)

    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        """PATCH changes only the settings it names; PUT replaces them (omitted ones take their
        defaults). Either way a secret not given keeps its stored value (outputs.services)."""
        serializer = self.get_serializer(self.get_object(), data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        output = services.output_update(
            output=serializer.instance,
            name=serializer.validated_data.get("name"),
            settings=serializer.validated_data.get("settings"),
            replace_settings=not partial,
        )
        return Response(self.get_serializer(output).data)

    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self.update(request, pk, partial=True)

    def perform_destroy(self, instance: Output) -> None:
        # Rows that depend on the output protect it (e.g. a connection needs its output until it has ended).
        try:
            instance.delete()
        except ProtectedError as exc:
            names = ", ".join(sorted({str(obj._meta.verbose_name_plural) for obj in exc.protected_objects}))
            raise serializers.ValidationError(
                {"detail": f"This output has {names}; delete them before deleting the output."}
            ) from None
