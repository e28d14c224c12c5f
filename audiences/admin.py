"""Audiences and profiles in the admin.

Audiences are written by audience_create / audience_update (the form calls them while it
validates, as explained in config/admin_forms.py); profiles only through the API's upsert, so
their admin is read-only. An audience's connections and the tutorial's "Connect output" flow are
added to the audience's page by forwarding (forwarding/admin/audiences.py), downstream of this app.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, IntegerField, OuterRef, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html

from audiences import criteria as criteria_lang
from audiences import erasure
from audiences.admin_builder import CRITERIA_HELP, CriteriaBuilderAdminMixin, CriteriaBuilderWidget
from audiences.admin_profiles import profile_page_context
from audiences.admin_splits import SplitAdminMixin
from audiences.criteria.facts import ProfileFacts
from audiences.download import zip_response
from audiences.estimates import has_conditions
from audiences.history import audience_charts
from audiences.identities import IDENTITY_TYPE_CHOICES
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile, ProfileErasure
from audiences.profiles import profile_identity_remove
from audiences.selectors import AudienceMetrics, audience_metrics
from audiences.services import audience_create, audience_update
from config.admin_forms import add_service_errors
from config.display import number, when
from config.request_parsing import id_from_query
from config.roles import DOWNLOAD_AUDIENCE, ERASE_PROFILE

EXAMPLE_CRITERIA = {"and": []}
AUDIENCE_FIELDS = ("name", "external_name", "description", "status", "criteria")


def count_of(model: type, fk: str, **filters: Any) -> Coalesce:
    """Rows of `model` pointing at the outer row, as a correlated subquery: one count per row
    without joining (and multiplying) several related tables in one GROUP BY."""
    rows = (
        model.objects.filter(**{fk: OuterRef("pk")}, **filters)
        .order_by()
        .values(fk)
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(rows, output_field=IntegerField()), 0)


class ReadOnlyModelAdmin(admin.ModelAdmin):
    """Lists and pages to look at; the data is written by the services only."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class TimestampsAdminMixin:
    """created_at / updated_at shown to the second, with how long ago (config/display.py)."""

    @admin.display(description="created", ordering="created_at")
    def created(self, obj: Any) -> str:
        return when(obj.created_at) if obj.pk else "—"

    @admin.display(description="updated", ordering="updated_at")
    def updated(self, obj: Any) -> str:
        return when(obj.updated_at) if obj.pk else "—"


# --- audiences ------------------------------------------------------------------------------


class CriteriaField(forms.JSONField):
    """A JSON textarea that shows the tree indented."""

    def prepare_value(self, value: Any) -> str:
        if isinstance(value, forms.fields.InvalidJSONInput):
            return value  # what the user typed, to fix it
        return json.dumps(value, indent=2, ensure_ascii=False)


class AudienceForm(forms.ModelForm):
    """Name, external name, description, status and criteria; saved by the audience services."""

    criteria = CriteriaField(help_text=CRITERIA_HELP, initial=EXAMPLE_CRITERIA, widget=CriteriaBuilderWidget())
    confirm_everybody = forms.BooleanField(
        required=False,
        label="Criteria without a condition",
        help_text="Tick to confirm criteria without any condition: the audience then holds every profile "
        "(or, with “Any of these” and nothing in it, nobody).",
    )

    class Meta:
        model = Audience
        fields = list(AUDIENCE_FIELDS)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The builder leaves this audience out of "member of another audience" and of the cycle check.
        self.fields["criteria"].widget.audience_id = self.instance.pk

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        criteria = cleaned.get("criteria")
        new_criteria = self.instance.pk is None or "criteria" in self.changed_data
        if new_criteria and isinstance(criteria, dict) and not has_conditions(criteria):
            if not cleaned.get("confirm_everybody"):
                # Constant without a condition: evaluating it on an empty profile tells which constant.
                everybody = _matches_without_conditions(criteria)
                self.add_error(
                    "criteria",
                    "These criteria have no condition, so the audience would hold "
                    + ("every profile" if everybody else "nobody")
                    + ". Add a condition, or tick “Criteria without a condition” to confirm.",
                )
        return cleaned

    def _post_clean(self) -> None:
        # Replaces the model validation: the service validates and writes (config/admin_forms.py).
        if self.errors:
            return
        # The audience's own fields (the admin adds the form's others, such as confirm_everybody, to _meta.fields).
        values = {name: self.cleaned_data[name] for name in AUDIENCE_FIELDS if name in self.cleaned_data}
        try:
            if self.instance.pk is None:
                self.instance = audience_create(**values)
            elif self.has_changed():
                changed = {name: values[name] for name in self.changed_data if name in values}
                self.instance = audience_update(audience=self.instance, **changed)
        except ValidationError as exc:
            add_service_errors(self, exc)


def _matches_without_conditions(criteria: dict) -> bool:
    try:
        criteria_lang.validate_criteria(criteria)
    except ValidationError:
        return True
    return criteria_lang.matches(criteria, ProfileFacts(profile_id=0, attributes={}), timezone.now())


class AudienceChangeList(ChangeList):
    """Attaches each listed audience's metrics, computed for the whole page in one query."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        metrics = audience_metrics(audience.pk for audience in self.result_list)
        for audience in self.result_list:
            audience.metrics = metrics.get(audience.pk)


class AudienceDownloadForm(forms.Form):
    identity_types = forms.MultipleChoiceField(
        choices=IDENTITY_TYPE_CHOICES,
        widget=forms.CheckboxSelectMultiple,
        initial=["email"],
        help_text="One CSV row per member and identity of a chosen type.",
    )


@admin.register(Audience)
class AudienceAdmin(CriteriaBuilderAdminMixin, SplitAdminMixin, TimestampsAdminMixin, admin.ModelAdmin):
    form = AudienceForm
    list_display = (
        "name",
        "status",
        "size",
        "adds_24h",
        "drops_24h",
        "volatility",
        "last_calculated",
    )
    list_filter = ("status",)
    search_fields = ("name", "external_name")
    # Everything the calculation says about the audience: shown, never edited.
    readonly_fields = (
        "size",
        "adds_24h",
        "drops_24h",
        "volatility",
        "criteria_version",
        "last_calculated",
        "evaluation_failure",
        "recompute_failure",
        "created",
        "updated",
    )
    fieldsets = (
        (None, {"fields": ("name", "external_name", "description", "status")}),
        ("Criteria", {"fields": ("criteria", "confirm_everybody")}),
        ("Calculation", {"fields": readonly_fields}),
    )

    def get_queryset(self, request: HttpRequest) -> QuerySet[Audience]:
        return super().get_queryset(request).annotate(size=count_of(AudienceMembership, "audience"))

    def get_changelist(self, request: HttpRequest, **kwargs: Any) -> type[ChangeList]:
        return AudienceChangeList

    def get_object(self, request: HttpRequest, object_id: str, from_field: str | None = None) -> Audience | None:
        audience = super().get_object(request, object_id, from_field)
        if audience is not None:
            audience.metrics = audience_metrics([audience.pk]).get(audience.pk)
        return audience

    def metrics(self, obj: Audience) -> AudienceMetrics | None:
        # Attached by AudienceChangeList / get_object; an unsaved audience has none.
        return getattr(obj, "metrics", None)

    @staticmethod
    def calculating(obj: Audience) -> bool:
        """Active and not calculated yet: its size would say 0 while its first calculation runs."""
        return obj.pk is not None and obj.status == Audience.Status.ACTIVE and obj.last_calculated_at is None

    @admin.display(description="size", ordering="size")
    def size(self, obj: Audience) -> str:
        if obj.pk is None:
            return "—"
        if self.calculating(obj):
            return "calculating…"
        if obj.status == Audience.Status.DRAFT:
            return "— (draft: calculated once active)"
        return number(getattr(obj, "size", 0))

    @admin.display(description="last calculated", ordering="last_calculated_at")
    def last_calculated(self, obj: Audience) -> str:
        if obj.pk is None:
            return "—"
        calculated = when(obj.last_calculated_at) if obj.last_calculated_at else "never"
        if obj.evaluation_error or obj.recompute_error:
            # Before "calculating…": a first calculation that keeps failing is not under way.
            return f"{calculated} (failing: see the audience)"
        if self.calculating(obj):
            return "calculating…"
        return calculated

    @admin.display(description="real-time evaluation")
    def evaluation_failure(self, obj: Audience) -> str:
        """Real-time evaluation left this audience out (its members stayed as they were); the rest went on."""
        if not obj.evaluation_error:
            return "no failure"
        return f"failed {when(obj.evaluation_failed_at)}: {obj.evaluation_error}"

    @admin.display(description="recompute")
    def recompute_failure(self, obj: Audience) -> str:
        if not obj.recompute_error:
            return "no failure"
        return (
            f"failed {obj.recompute_failures} time(s) in a row, last {when(obj.recompute_failed_at)}: "
            f"{obj.recompute_error}; next try {when(obj.recompute_retry_at)}"
        )

    @admin.display(description="Adds (24 h)")
    def adds_24h(self, obj: Audience) -> str:
        metrics = self.metrics(obj)
        return number(metrics.adds_24h) if metrics else "—"

    @admin.display(description="Drops (24 h)")
    def drops_24h(self, obj: Audience) -> str:
        metrics = self.metrics(obj)
        return number(metrics.drops_24h) if metrics else "—"

    @admin.display(description="volatility")
    def volatility(self, obj: Audience) -> str:
        # (adds + drops) / size over the last 24 hours.
        metrics = self.metrics(obj)
        return f"{metrics.volatility:.1%}" if metrics else "—"

    def save_model(self, request: HttpRequest, obj: Audience, form: Any, change: bool) -> None:
        # Already saved by audience_create / audience_update while the form validated.
        pass

    def has_delete_permission(self, request: HttpRequest, obj: Audience | None = None) -> bool:
        # No service deletes audiences (membership and partners would be left behind): archive instead.
        return False

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Audience | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            # The button shows to those who may download (config/roles.py), as in the REST API.
            if request.user.has_perm(DOWNLOAD_AUDIENCE):
                context["download_url"] = reverse("admin:audiences_audience_download", args=[obj.pk])
            context["history_charts"] = audience_charts(obj.pk)
            context.update(self.split_context(request, obj))
        return super().render_change_form(request, context, add, change, form_url, obj)

    # --- download ---------------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        download = path(
            "<path:object_id>/download/",
            self.admin_site.admin_view(self.download_view),
            name="audiences_audience_download",
        )
        return [download, *super().get_urls()]

    def download_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Choose identity types, then answer the ZIP (one CSV and a manifest), streamed."""
        audience = self.audience_for_page(request, object_id, permission=DOWNLOAD_AUDIENCE)
        # Not `request.POST or None`: a POST with no box ticked must show the error.
        form = AudienceDownloadForm(request.POST if request.method == "POST" else None)
        if request.method == "POST" and form.is_valid():
            return zip_response([audience.pk], form.cleaned_data["identity_types"], stem=f"audience_{audience.pk}")
        context = {**self.audience_page_context(request, audience, f"Download “{audience}”"), "form": form}
        return TemplateResponse(request, "admin/audiences/audience/download.html", context)

    # --- pages under an audience (Download here, "Connect output" in forwarding) -------------

    def audience_for_page(self, request: HttpRequest, object_id: str, *, permission: str | None = None) -> Audience:
        """The audience of a page under it; 404 if there is none, 403 without the view permission (and
        `permission`, when given)."""
        audience = self.get_object(request, unquote(object_id))
        if audience is None:
            raise Http404("No such audience.")
        if not self.has_view_permission(request, audience) or (permission and not request.user.has_perm(permission)):
            raise PermissionDenied
        return audience

    def audience_page_context(self, request: HttpRequest, audience: Audience, title: str) -> dict[str, Any]:
        """What every page under an audience shows: the admin's frame and the way back to the audience."""
        return {
            **self.admin_site.each_context(request),
            "title": title,
            "subtitle": None,
            "opts": self.opts,
            "original": audience,
            "audience": audience,
            "audience_url": reverse("admin:audiences_audience_change", args=[audience.pk]),
        }


# --- profiles -------------------------------------------------------------------------------


class IdentityInline(admin.TabularInline):
    model = Identity
    fields = ("type", "value", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class MembershipChangeInline(IdentityInline):
    """When and why the profile entered or left each audience, newest first."""

    model = MembershipChange
    fields = ("at", "audience", "kind", "reason")
    readonly_fields = fields
    ordering = ("-at", "-id")
    verbose_name = "membership change"
    verbose_name_plural = "audience history"


@admin.register(Profile)
class ProfileAdmin(ReadOnlyModelAdmin):
    """Profiles change through the API's upsert, which also re-evaluates audiences; "Erase" carries out a
    data subject's request to be forgotten (audiences/erasure.py), after a confirmation page."""

    actions = ("erase_profiles",)

    list_display = ("__str__", "identities_summary", "memberships_count", "updated_at")
    # Part of an identity finds its profile (a trigram index serves it on PostgreSQL: migration 0004).
    search_fields = ("identities__value",)
    search_help_text = "Search by part of an identity: an email, a customer id, a device id…"
    inlines = (IdentityInline, MembershipChangeInline)
    fields = ("attributes_display", "created_at", "updated_at")
    readonly_fields = fields
    change_form_template = "admin/audiences/profile/change_form.html"

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Profile | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            context.update(profile_page_context(obj))
            if request.user.has_perm("audiences.change_profile"):
                context["removable_identities"] = (
                    list(obj.identities.order_by("id")) if obj.identities.count() > 1 else []
                )
                context["remove_identity_url"] = reverse("admin:audiences_profile_remove_identity", args=[obj.pk])
        return super().render_change_form(request, context, add, change, form_url, obj)

    def get_urls(self) -> list[URLPattern]:
        return [
            path(
                "<path:object_id>/remove-identity/",
                self.admin_site.admin_view(self.remove_identity_view),
                name="audiences_profile_remove_identity",
            ),
            *super().get_urls(),
        ]

    def remove_identity_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """POST: take one identity off the profile (audiences.profiles.profile_identity_remove): partners holding
        it get a remove of it alone. Needs audiences.change_profile, as the API's remove-identity."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not request.user.has_perm("audiences.change_profile"):
            raise PermissionDenied
        profile = self.get_object(request, unquote(object_id))
        if profile is None:
            raise Http404("No such profile.")
        identity = Identity.objects.filter(profile=profile, pk=id_from_query(request.POST.get("identity"))).first()
        if identity is None:
            messages.error(request, "That identity is no longer on this profile.")
        else:
            try:
                result = profile_identity_remove(
                    profile_id=profile.pk, identity={"type": identity.type, "value": identity.value}
                )
            except ValidationError as exc:
                messages.error(request, " ".join(exc.messages))
            else:
                self.log_change(request, profile, f"Removed the identity {identity}.")
                left = f" It left {len(result.left)} audience(s)." if result.left else ""
                messages.success(
                    request, f"Removed {identity}: partners holding it get a remove of that identity alone.{left}"
                )
        return redirect("admin:audiences_profile_change", profile.pk)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Profile]:
        return (
            super()
            .get_queryset(request)
            .annotate(memberships_count=count_of(AudienceMembership, "profile"))
            .prefetch_related("identities")
        )

    @admin.display(description="identities")
    def identities_summary(self, obj: Profile) -> str:
        return ", ".join(str(identity) for identity in obj.identities.all()) or "—"

    @admin.display(description="audiences", ordering="memberships_count")
    def memberships_count(self, obj: Profile) -> int:
        return getattr(obj, "memberships_count", 0)

    @admin.display(description="attributes")
    def attributes_display(self, obj: Profile) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.attributes, indent=2, ensure_ascii=False, sort_keys=True))

    def has_erase_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(ERASE_PROFILE)

    @admin.action(description="Erase the selected profiles (request to be forgotten)", permissions=["erase"])
    def erase_profiles(self, request: HttpRequest, queryset: QuerySet[Profile]) -> HttpResponse | None:
        if request.POST.get("confirm") != "yes":
            return TemplateResponse(
                request,
                "admin/audiences/profile/erase_confirmation.html",
                {
                    **self.admin_site.each_context(request),
                    "title": "Erase profiles?",
                    "opts": self.model._meta,
                    "profiles": list(queryset.order_by("pk")[:1000]),
                    "count": queryset.count(),
                    "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
                },
            )
        erasures = []
        for profile_id in list(queryset.order_by("pk").values_list("pk", flat=True)):
            try:
                erasures.append(erasure.profile_erase(profile_id=profile_id, source="admin"))
            except Http404:
                pass  # erased meanwhile
        removes = sum(e.partner_removes for e in erasures)
        self.message_user(
            request,
            f"Erased {number(len(erasures))} profile(s): identities, events, attributes and history deleted; "
            f"{number(removes)} partner remove(s) planned. The erasure records keep counts only.",
            messages.SUCCESS,
        )
        return None


@admin.register(ProfileErasure)
class ProfileErasureAdmin(ReadOnlyModelAdmin):
    """The erasures done: counts and the partners' removes, no personal data."""

    list_display = (
        "id",
        "requested_at",
        "status",
        "source",
        "identities",
        "events",
        "audiences_left",
        "partner_removes",
        "partner_refused",
        "finished_at",
    )
    list_filter = ("status", "source")


@admin.register(MembershipChange)
class MembershipChangeAdmin(ReadOnlyModelAdmin):
    list_display = ("at", "audience", "profile", "kind", "reason")
    list_filter = ("kind", "audience", "at")
    list_select_related = ("audience", "profile")
    date_hierarchy = "at"
    search_fields = ("=profile__identities__value", "audience__name")


from audiences import admin_inputs  # noqa: E402, F401  (registers InputAdmin)
