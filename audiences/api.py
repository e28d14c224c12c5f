"""API views for profiles and audiences: check the request shape, call one service, serialize.

Each viewset declares who may use each action (`permissions_by_action`, config/api_permissions.py)
and how its lists are filtered (django-filter FilterSets below, `ordering_fields`, `search_fields`).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.db.models import Prefetch, ProtectedError, QuerySet
from django.http import Http404, StreamingHttpResponse
from django_filters import rest_framework as filters
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.generics import get_object_or_404
from rest_framework.negotiation import BaseContentNegotiation
from rest_framework.request import Request
from rest_framework.response import Response

from audiences import erasure, profiles, selectors, services
from audiences.download import zip_response
from audiences.estimates import criteria_estimate, names_seen
from audiences.identities import IDENTITY_TYPE_CHOICES, normalise_identity
from audiences.merge import profiles_merge
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile, ProfileErasure
from audiences.serializers import (
    AudienceEstimateSerializer,
    AudienceMemberSerializer,
    AudienceSerializer,
    ErasureRequestSerializer,
    EstimateSerializer,
    HistoryEntrySerializer,
    IdentityRemoveSerializer,
    NamesQuerySerializer,
    NamesSeenSerializer,
    ProfileDetailSerializer,
    ProfileErasureSerializer,
    ProfileMergeResultSerializer,
    ProfileMergeSerializer,
    ProfileSerializer,
    ProfileUpsertResultSerializer,
    ProfileUpsertSerializer,
)
from config.api_errors import ConflictError
from config.api_schema import ProfileConflictSerializer, error_response
from config.api_views import ObjectLookupMixin
from config.roles import BUILD_AUDIENCES, DOWNLOAD_AUDIENCE, ERASE_PROFILE, MERGE_PROFILE

# What reading a profile shows: the profile, its identities and its audience history.
READ_PROFILES = ("audiences.view_profile", "audiences.view_identity", "audiences.view_membershipchange")


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


# --- profiles --------------------------------------------------------------------------------


class IdentityLookupForm(forms.Form):
    """identity_type and identity_value go together; the value is normalised as it is stored."""

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind, value = data.get("identity_type"), data.get("identity_value")
        if self.errors or (not kind and not value):
            return data
        for name in ("identity_type", "identity_value"):
            if not data.get(name):
                raise ValidationError({name: ["Give identity_type and identity_value together."]})
        try:
            data["identity_value"] = normalise_identity(kind, value)
        except ValidationError as exc:
            raise ValidationError({"identity_value": exc.messages}) from None
        return data


class ProfileFilter(filters.FilterSet):
    audience = filters.ModelChoiceFilter(
        queryset=Audience.objects.all(),
        field_name="memberships__audience",
        help_text="Profiles that are members of this audience (id).",
    )
    identity_type = filters.ChoiceFilter(
        choices=IDENTITY_TYPE_CHOICES, method="filter_identity", help_text="With identity_value: look a profile up."
    )
    identity_value = filters.CharFilter(
        method="filter_identity", help_text="With identity_type; normalised as stored (emails lower-cased, ...)."
    )

    class Meta:
        model = Profile
        fields = ["audience", "identity_type", "identity_value"]
        form = IdentityLookupForm

    def filter_identity(self, queryset: QuerySet[Profile], name: str, value: str) -> QuerySet[Profile]:
        if name != "identity_value":
            return queryset  # the pair is applied once, with the value
        return queryset.filter(identities__type=self.form.cleaned_data["identity_type"], identities__value=value)


@extend_schema_view(
    create=extend_schema(
        summary="Upsert a profile by its identities",
        request=ProfileUpsertSerializer,
        examples=[
            OpenApiExample(
                "A traveller",
                request_only=True,
                value={
                    "identities": [{"type": "email", "value": "traveller007@example.com"}],
                    "attributes": {"status": "Premium", "city": "Paris"},
                },
            )
        ],
        responses={
            200: OpenApiResponse(ProfileUpsertResultSerializer, description="An existing profile, updated."),
            201: OpenApiResponse(ProfileUpsertResultSerializer, description="A new profile."),
            409: OpenApiResponse(ProfileConflictSerializer, description="The identities belong to several profiles."),
        },
    ),
    history=extend_schema(
        summary="When and why the profile entered or left each audience", responses=HistoryEntrySerializer(many=True)
    ),
    remove_identity=extend_schema(
        summary="Take one identity off the profile",
        description="Where the profile is a member, partners holding that identity get a remove of it alone (its "
        "other identities stay), then the audiences are evaluated again without it. The profile's last identity "
        "cannot be removed (erase the profile instead).",
        request=IdentityRemoveSerializer,
        responses={200: ProfileUpsertResultSerializer},
    ),
    merge=extend_schema(
        summary="Merge another profile into this one (resolves an identity conflict)",
        description="Moves the other profile's identities, events and audience history onto this one (its "
        "attributes fill the gaps: this profile's values win), deletes it, re-evaluates the audiences and "
        "queues what partners must now hold, in one transaction.",
        request=ProfileMergeSerializer,
        responses={200: ProfileMergeResultSerializer},
    ),
)
class ProfileViewSet(ObjectLookupMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """POST upserts by identities; GET lists (filtered by audience or identity) or reads one."""

    serializer_class = ProfileSerializer
    filterset_class = ProfileFilter
    ordering_fields = ["id", "created_at", "updated_at"]
    permissions_by_action = {
        "list": READ_PROFILES,
        "retrieve": READ_PROFILES,
        "history": READ_PROFILES,
        # An upsert creates or changes a profile, whichever its identities say.
        "create": ("audiences.add_profile", "audiences.change_profile"),
        "merge": (MERGE_PROFILE,),
        "remove_identity": ("audiences.change_profile",),
    }

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
        if self.action == "history":
            return HistoryEntrySerializer
        if self.action == "merge":
            return ProfileMergeSerializer
        return ProfileSerializer

    def create(self, request: Request) -> Response:
        body = ProfileUpsertSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        result = profiles.profile_upsert(
            identities=body.validated_data["identities"], attributes=body.validated_data.get("attributes")
        )
        profile = self.get_queryset().get(pk=result.profile.pk)
        profile.entered, profile.left = result.entered, result.left
        return Response(
            ProfileUpsertResultSerializer(profile).data,
            status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK,
        )

    @action(
        detail=True,
        methods=["get"],
        queryset=MembershipChange.objects.none(),
        filterset_class=None,
        ordering_fields=None,
    )
    def history(self, request: Request, pk: str | None = None) -> Response:
        """When and why this profile entered or left each audience, newest first."""
        profile = get_object_or_404(Profile.objects.only("pk"), pk=pk)
        changes = self.filter_queryset(selectors.profile_history_queryset(profile.pk))
        page = self.paginate_queryset(changes)
        entries = [selectors.history_entry(change) for change in page]
        return self.get_paginated_response(HistoryEntrySerializer(entries, many=True).data)

    @action(detail=True, methods=["post"], url_path="remove-identity", filterset_class=None, ordering_fields=None)
    def remove_identity(self, request: Request, pk: str | None = None) -> Response:
        """Take one identity off this profile (audiences.profiles.profile_identity_remove)."""
        profile = get_object_or_404(Profile.objects.only("pk"), pk=pk)
        body = IdentityRemoveSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = profiles.profile_identity_remove(profile_id=profile.pk, identity=dict(body.validated_data))
        except Profile.DoesNotExist:  # erased meanwhile
            raise Http404 from None
        kept = self.get_queryset().get(pk=profile.pk)
        kept.entered, kept.left = result.entered, result.left
        return Response(ProfileUpsertResultSerializer(kept).data)

    @action(detail=True, methods=["post"], filterset_class=None, ordering_fields=None)
    def merge(self, request: Request, pk: str | None = None) -> Response:
        """Merge the profile named in the body into this one (audiences/merge.py)."""
        profile = get_object_or_404(Profile.objects.only("pk"), pk=pk)
        body = ProfileMergeSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = profiles_merge(profile_id=profile.pk, other_id=body.validated_data["profile"])
        except Profile.DoesNotExist:  # deleted meanwhile
            raise Http404 from None
        data = {**vars(result), "profile": self.get_queryset().get(pk=profile.pk)}
        return Response(ProfileMergeResultSerializer(data).data)


# --- erasures --------------------------------------------------------------------------------


class ErasureFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=ProfileErasure.Status.choices)

    class Meta:
        model = ProfileErasure
        fields = ["status"]


@extend_schema_view(
    create=extend_schema(
        summary="Erase a data subject's profile, found by any of its identities",
        description=(
            "Removes the profile from every partner that holds it (through the outbox, recorded), then deletes its "
            "identities, events, attributes and history. Answers the erasure record (no personal data): `removing` "
            "until every partner remove is delivered, then `done`."
        ),
        request=ErasureRequestSerializer,
        examples=[
            OpenApiExample(
                "By email",
                request_only=True,
                value={"identity_type": "email", "identity_value": "traveller007@example.com"},
            )
        ],
        responses={
            202: OpenApiResponse(ProfileErasureSerializer, description="Erased; the partners' removes are planned."),
            404: error_response("404", "No profile holds this identity."),
        },
    ),
)
class ProfileErasureViewSet(
    ObjectLookupMixin,
    mixins.CreateModelMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    viewsets.GenericViewSet,
):
    """POST erases a profile; GET lists the erasures or reads one (to see its partner removes finish)."""

    queryset = ProfileErasure.objects.all()
    serializer_class = ProfileErasureSerializer
    filterset_class = ErasureFilter
    ordering_fields = ["id", "requested_at"]
    permissions_by_action = {
        "list": ("audiences.view_profileerasure",),
        "retrieve": ("audiences.view_profileerasure",),
        "create": (ERASE_PROFILE,),
    }

    def create(self, request: Request) -> Response:
        body = ErasureRequestSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        profile = erasure.profile_find_by_identity(
            identity_type=body.validated_data["identity_type"], identity_value=body.validated_data["identity_value"]
        )
        done = erasure.profile_erase(profile_id=profile.pk, source="api")
        return Response(ProfileErasureSerializer(done).data, status=status.HTTP_202_ACCEPTED)


# --- audiences -------------------------------------------------------------------------------


class AudienceFilter(filters.FilterSet):
    status = filters.ChoiceFilter(choices=Audience.Status.choices)
    name = filters.CharFilter(lookup_expr="icontains", help_text="The name contains this (case-insensitive).")

    class Meta:
        model = Audience
        fields = ["status", "name"]


IDENTITY_TYPES_PARAMETER = OpenApiParameter(
    "identity_types",
    str,
    required=True,
    description="Comma-separated identity types, one CSV row per member and identity of these types.",
)
ZIP_RESPONSES = {
    (200, "application/zip"): OpenApiResponse(
        OpenApiTypes.BINARY, description="A streamed ZIP: one CSV per audience and manifest.json."
    ),
    400: error_response("400"),
}


@extend_schema_view(
    create=extend_schema(
        examples=[
            OpenApiExample(
                "Potential Parisians",
                request_only=True,
                value={
                    "name": "Potential Parisians",
                    "status": "draft",
                    "criteria": {
                        "and": [
                            {"event": "Destination Intro", "recency": {"within_last": {"amount": 30, "unit": "days"}}},
                            {"attribute": "status", "operator": "equals", "value": "Premium"},
                        ]
                    },
                },
            )
        ]
    ),
    update=extend_schema(description="Name and criteria required; the other fields are kept when not sent."),
    partial_update=extend_schema(description="Only the fields sent change."),
    destroy=extend_schema(
        responses={
            204: None,
            409: error_response("409", "Rows depend on the audience (its connections); delete them first."),
        }
    ),
    members=extend_schema(summary="The members, with their identities", responses=AudienceMemberSerializer(many=True)),
    estimate=extend_schema(
        summary="Estimate criteria: the profiles they match now (nothing is saved)",
        request=AudienceEstimateSerializer,
        examples=[
            OpenApiExample(
                "Potential Parisians",
                request_only=True,
                value={
                    "criteria": {
                        "and": [
                            {"event": "Destination Intro", "recency": {"within_last": {"amount": 30, "unit": "days"}}},
                            {"attribute": "status", "operator": "equals", "value": "Premium"},
                        ]
                    }
                },
            )
        ],
        responses=EstimateSerializer,
    ),
    names=extend_schema(
        summary="Names seen in the data (attributes, events), to write criteria with",
        parameters=[NamesQuerySerializer],
        responses={200: NamesSeenSerializer, 400: error_response("400")},
    ),
    download=extend_schema(
        summary="Download the members (ZIP)", parameters=[IDENTITY_TYPES_PARAMETER], responses=ZIP_RESPONSES
    ),
    download_many=extend_schema(
        operation_id="audiences_download_many",
        summary="Download several audiences (ZIP)",
        parameters=[
            OpenApiParameter("audiences", str, required=True, description="Comma-separated audience ids."),
            IDENTITY_TYPES_PARAMETER,
        ],
        responses=ZIP_RESPONSES,
    ),
)
class AudienceViewSet(
    ObjectLookupMixin,
    mixins.ListModelMixin,
    mixins.RetrieveModelMixin,
    mixins.DestroyModelMixin,
    viewsets.GenericViewSet,
):
    serializer_class = AudienceSerializer
    queryset = Audience.objects.all()
    filterset_class = AudienceFilter
    search_fields = ["name", "external_name", "description"]
    ordering_fields = ["id", "name", "status", "created_at", "updated_at", "last_calculated_at"]
    permissions_by_action = {
        "list": ("audiences.view_audience",),
        "retrieve": ("audiences.view_audience",),
        "create": ("audiences.add_audience",),
        "update": ("audiences.change_audience",),
        "partial_update": ("audiences.change_audience",),
        "destroy": ("audiences.delete_audience",),
        # Members come with their identities: personal data.
        "members": ("audiences.view_audience", "audiences.view_profile", "audiences.view_identity"),
        "download": ("audiences.view_audience", DOWNLOAD_AUDIENCE),
        "download_many": ("audiences.view_audience", DOWNLOAD_AUDIENCE),
        # The criteria builder's reads serve the add and the change page alike.
        "estimate": BUILD_AUDIENCES,
        "names": BUILD_AUDIENCES,
    }

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

    def update(self, request: Request, pk: str | None = None, partial: bool = False) -> Response:
        """PUT: name and criteria required, the other fields kept when not sent (DRF's convention);
        PATCH: only the fields sent."""
        serializer = self.get_serializer(self.get_object(), data=request.data, partial=partial)
        serializer.is_valid(raise_exception=True)
        audience = services.audience_update(audience=serializer.instance, **serializer.validated_data)
        return Response(self.get_serializer(audience).data)

    def partial_update(self, request: Request, pk: str | None = None) -> Response:
        return self.update(request, pk, partial=True)

    def perform_destroy(self, instance: Audience) -> None:
        # Rows that depend on the audience protect it (e.g. its connections: deleting it would orphan what
        # partners hold).
        try:
            instance.delete()
        except ProtectedError as exc:
            names = ", ".join(sorted({str(obj._meta.verbose_name_plural) for obj in exc.protected_objects}))
            raise ConflictError(f"This audience has {names}; delete them before deleting the audience.") from None

    # --- the criteria builder: estimate and names, without saving anything ----------------------

    @action(detail=False, methods=["post"], serializer_class=AudienceEstimateSerializer)
    def estimate(self, request: Request) -> Response:
        """How many profiles the criteria match now, and the names they use that the data never held,
        without saving anything. A criteria error is a 400 naming its path, as saving would answer."""
        body = AudienceEstimateSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        audience = body.validated_data.get("audience")
        try:
            estimate = criteria_estimate(
                criteria=body.validated_data["criteria"], audience_id=audience.pk if audience else None
            )
        except ValidationError as exc:
            raise ValidationError({"criteria": exc.messages}) from None
        return Response(EstimateSerializer(estimate).data)

    @action(
        detail=False,
        methods=["get"],
        serializer_class=NamesSeenSerializer,
        filterset_class=None,
        search_fields=None,
        ordering_fields=None,
        pagination_class=None,
    )
    def names(self, request: Request) -> Response:
        """Attribute and event names seen in a sample of the data, with their counts in it."""
        query = NamesQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(NamesSeenSerializer(names_seen(event=query.validated_data.get("event"))).data)

    @action(
        detail=True,
        methods=["get"],
        serializer_class=AudienceMemberSerializer,
        queryset=AudienceMembership.objects.all(),
        filterset_class=None,
        search_fields=None,
        ordering_fields=["entered_at", "profile"],
    )
    def members(self, request: Request, pk: str | None = None) -> Response:
        """The members, each with its identities, oldest member first (profile id by default)."""
        audience = get_object_or_404(Audience.objects.only("pk"), pk=pk)
        members = self.get_queryset().filter(audience=audience).order_by("profile_id")
        members = self.filter_queryset(members).prefetch_related(
            Prefetch("profile__identities", queryset=Identity.objects.order_by("id"))
        )
        page = self.paginate_queryset(members)
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
        if not parts or not all(part.isascii() and part.isdigit() and len(part) <= 18 for part in parts):
            raise ValidationError({"audiences": ["Give audience ids separated by commas, e.g. ?audiences=1,2."]})
        return zip_response([int(part) for part in parts], query_identity_types(request), stem="audiences")
