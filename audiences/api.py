"""API views for profiles and audiences: check the request shape, call one service, serialize."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db.models import Prefetch, ProtectedError, QuerySet
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.permissions import BasePermission, IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response

from audiences import profiles, selectors, services
from audiences.download import zip_response
from audiences.estimates import criteria_estimate, names_seen
from audiences.models import Audience, AudienceMembership, Identity, Profile
from audiences.serializers import (
    AudienceEstimateSerializer,
    AudienceMemberSerializer,
    AudienceSerializer,
    HistoryEntrySerializer,
    ProfileDetailSerializer,
    ProfileLookupSerializer,
    ProfileSerializer,
    ProfileUpsertSerializer,
)
from config.api_errors import ServiceErrorsMixin


class FirstRendererNegotiation(BaseContentNegotiation):
    """For the ZIP downloads: answer whatever the client accepts (a browser asks for anything,
    a client may ask for application/zip), and errors in JSON, instead of 406."""

    def select_parser(self, request: Request, parsers: list[Any]) -> Any:
        return parsers[0]

    def select_renderer(self, request: Request, renderers: list[Any], format_suffix: str | None = None) -> tuple:
        return (renderers[0], renderers[0].media_type)


def query_identity_types(request: Request) -> str:
    # ?identity_types=email,google_advertising_id (or the parameter repeated).
    return ",".join(request.query_params.getlist("identity_types"))


class CanBuildAudiences(BasePermission):
    """The criteria builder's endpoints (estimate, names seen): for who may create or change audiences."""

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user and (user.has_perm("audiences.add_audience") or user.has_perm("audiences.change_audience")))


class ProfileViewSet(ServiceErrorsMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """POST upserts by identities; GET ?identity_type=&identity_value= looks one up."""

    serializer_class = ProfileSerializer

    def get_queryset(self) -> QuerySet[Profile]:
        # What ProfileSerializer reads, in two extra queries per page instead of two per profile.
        return Profile.objects.prefetch_related(
            Prefetch("identities", queryset=Identity.objects.order_by("id")),
            Prefetch(
                "memberships",
                queryset=AudienceMembership.objects.filter(audience__status=Audience.Status.ACTIVE),
                to_attr="active_memberships",
            ),
        )

    def get_serializer_class(self) -> type[serializers.BaseSerializer]:
        if self.action == "retrieve":
            return ProfileDetailSerializer
        if self.action == "create":
            return ProfileUpsertSerializer
        return ProfileSerializer

    def filter_queryset(self, queryset: QuerySet[Profile]) -> QuerySet[Profile]:
        if self.action != "list":
            return queryset
        lookup = ProfileLookupSerializer(data=self.request.query_params)
        lookup.is_valid(raise_exception=True)
        if lookup.validated_data:
            queryset = queryset.filter(
                identities__type=lookup.validated_data["identity_type"],
                identities__value=lookup.validated_data["identity_value"],
            )
        return queryset

    def create(self, request: Request) -> Response:
        body = ProfileUpsertSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = profiles.profile_upsert(
            identities=body.validated_data["identities"], attributes=body.validated_data.get("attributes")
        )
        profile = self.get_queryset().get(pk=result.profile.pk)
        data = {**ProfileSerializer(profile).data, "entered": result.entered, "left": result.left}
        return Response(data, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)

    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str | None = None) -> Response:
        """When and why this profile entered or left each audience, newest first."""
        profile = get_object_or_404(Profile.objects.only("pk"), pk=pk)
        page = self.paginate_queryset(selectors.profile_history_queryset(profile.pk))
        entries = [selectors.history_entry(change) for change in page]
        return self.get_paginated_response(HistoryEntrySerializer(entries, many=True).data)


class AudienceViewSet(
    ServiceErrorsMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = AudienceSerializer
    queryset = Audience.objects.all()

    def list(self, request: Request) -> Response:
        # REST_FRAMEWORK sets PAGE_SIZE, so there always is a page.
        page = self.paginate_queryset(self.filter_queryset(self.get_queryset()))
        context = {**self.get_serializer_context(), **self.page_context(page)}
        return self.get_paginated_response(self.get_serializer(page, many=True, context=context).data)

    def page_context(self, page: list[Audience]) -> dict[str, Any]:
        """What the serializer shows of a whole page, computed in one query (the serializer would count
        one audience at a time): the metrics."""
        return {"audience_metrics": selectors.audience_metrics(a.pk for a in page)}

    def create(self, request: Request) -> Response:
        serializer = self.get_serializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        audience = services.audience_create(**serializer.validated_data)
        return Response(self.get_serializer(audience).data, status=status.HTTP_201_CREATED)

    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        serializer = self.get_serializer(self.get_object(), data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        # validated_data holds only the fields sent: the changed ones.
        audience = services.audience_update(audience=serializer.instance, **serializer.validated_data)
        return Response(self.get_serializer(audience).data)

    def perform_destroy(self, instance: Audience) -> None:
        # Rows that depend on the audience protect it (e.g. its connections: deleting it would orphan what
        # partners hold).
        try:
            instance.delete()
        except ProtectedError as exc:
            names = ", ".join(sorted({str(obj._meta.verbose_name_plural) for obj in exc.protected_objects}))
            raise serializers.ValidationError(
                {"detail": f"This audience has {names}; delete them before deleting the audience."}
            ) from None

    # --- the criteria builder: estimate and names, without saving anything ----------------------

    @action(
        detail=False,
        methods=["post"],
        serializer_class=AudienceEstimateSerializer,
        permission_classes=[IsAdminUser, CanBuildAudiences],
    )
    def estimate(self, request: Request) -> Response:
        """POST {"criteria": tree, "audience": id (optional, the audience being edited)}: how many profiles
        match now, names never seen in the data, without saving. 400 names the criteria's problem."""
        body = AudienceEstimateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        audience = body.validated_data.get("audience")
        try:
            estimate = criteria_estimate(
                criteria=body.validated_data["criteria"], audience_id=audience.pk if audience else None
            )
        except ValidationError as exc:
            raise ValidationError({"criteria": exc.messages}) from None
        return Response(estimate.as_dict())

    @action(detail=False, methods=["get"], permission_classes=[IsAdminUser, CanBuildAudiences])
    def names(self, request: Request) -> Response:
        """GET ?event=<name>: attribute and event names seen in the data, with counts in the sample."""
        return Response(names_seen(event=request.query_params.get("event")).as_dict())

    @action(detail=True, methods=["get"], serializer_class=AudienceMemberSerializer)
    def members(self, request: Request, pk: str | None = None) -> Response:
        audience = self.get_object()
        page = self.paginate_queryset(AudienceMembership.objects.filter(audience=audience).order_by("profile_id"))
        return self.get_paginated_response(AudienceMemberSerializer(page, many=True).data)

    @action(detail=True, methods=["get"], content_negotiation_class=FirstRendererNegotiation)
    def download(self, request: Request, pk: str | None = None) -> StreamingHttpResponse:
        """GET ?identity_types=email,google_advertising_id: the members as a streamed ZIP."""
        audience = self.get_object()
        return zip_response([audience.pk], query_identity_types(request), stem=f"audience_{audience.pk}")

    @action(
        detail=False,
        methods=["get"],
        url_path="download",
        url_name="download-many",
        content_negotiation_class=FirstRendererNegotiation,
    )
    def download_many(self, request: Request) -> StreamingHttpResponse:
        """GET ?audiences=1,2&identity_types=email: several audiences in one ZIP, one CSV each."""
        raw = ",".join(request.query_params.getlist("audiences"))
        parts = [part.strip() for part in raw.split(",") if part.strip()]
        if not parts or not all(part.isdigit() for part in parts):
            raise ValidationError({"audiences": ["Give audience ids separated by commas, e.g. ?audiences=1,2."]})
        return zip_response([int(part) for part in parts], query_identity_types(request), stem="audiences")
