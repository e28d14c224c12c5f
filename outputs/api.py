"""API views for the partner directory and outputs: check the shape, call one service, serialize."""

from __future__ import annotations

from django.db.models import ProtectedError
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiExample, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.request import Request
from rest_framework.response import Response

from config.api_errors import ConflictError
from config.api_schema import error_response
from config.api_views import ObjectLookupMixin
from outputs import services
from outputs.models import Output
from outputs.partners.registry import PARTNERS
from outputs.serializers import OutputSerializer, PartnerSerializer

VIEW = "outputs.view_output"


def partner_filter(field_name: str) -> filters.ChoiceFilter:
    """?partner=mailchimp: a key of the partner registry (an unknown one is a 400)."""
    return filters.ChoiceFilter(
        field_name=field_name,
        choices=lambda: [(key, cls.name) for key, cls in sorted(PARTNERS.items())],
        help_text="A partner key (e.g. mailchimp).",
    )


class OutputFilter(filters.FilterSet):
    partner = partner_filter("partner_key")

    class Meta:
        model = Output
        fields = ["partner"]


@extend_schema_view(list=extend_schema(summary="The partner directory", responses=PartnerSerializer(many=True)))
class PartnerViewSet(viewsets.ViewSet):
    """The partner directory: a handful of classes, so one unpaginated list (as the admin's directory,
    it needs permission to view outputs)."""

    permissions_by_action = {"list": (VIEW,)}

    def list(self, request: Request) -> Response:
        partners = [PARTNERS[key] for key in sorted(PARTNERS)]
        return Response(PartnerSerializer(partners, many=True).data)


@extend_schema_view(
    create=extend_schema(
        examples=[
            OpenApiExample(
                "Mailchimp",
                request_only=True,
                value={
                    "name": "Mailchimp",
                    "partner": "mailchimp",
                    "settings": {"api_key": "0123456789abcdef0123456789abcdef-us6", "double_opt_in": True},
                },
            )
        ]
    ),
    update=extend_schema(
        description="Name and partner required; the settings are replaced: those left out take their defaults, "
        "a secret left out keeps its stored value."
    ),
    partial_update=extend_schema(
        description="Only what is sent changes: settings not named keep their values, as do secrets left out."
    ),
    destroy=extend_schema(
        responses={
            204: None,
            409: error_response("409", "Rows depend on the output (its connections); delete them first."),
        }
    ),
)
class OutputViewSet(
    ObjectLookupMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = OutputSerializer
    queryset = Output.objects.all()
    filterset_class = OutputFilter
    search_fields = ["name"]
    ordering_fields = ["id", "name", "created_at", "updated_at"]
    permissions_by_action = {
        "list": (VIEW,),
        "retrieve": (VIEW,),
        "create": ("outputs.add_output",),
        "update": ("outputs.change_output",),
        "partial_update": ("outputs.change_output",),
        "destroy": ("outputs.delete_output",),
    }

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
        """PATCH changes only what it names (the name, some settings); PUT (name and partner required)
        replaces the settings: omitted ones take their defaults. Either way a secret not given keeps its
        stored value (outputs.services)."""
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
            raise ConflictError(f"This output has {names}; delete them before deleting the output.") from None
