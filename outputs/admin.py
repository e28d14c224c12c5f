"""Outputs in the admin: the partner Directory, and add/change forms built from each
partner's configuration settings (the tutorial's "Add the Mailchimp output")."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html

from outputs.forms import output_form_for
from outputs.models import Output
from outputs.partners.base import Capability, Partner
from outputs.partners.registry import PARTNERS, get_partner_class

CAPABILITY_LABELS = {
    Capability.LIST: "List: keeps an audience (list, segment) at the partner in sync",
    Capability.ATTRIBUTE: "Attribute: tags each user with the audience name",
    Capability.REALTIME: "Realtime: changes are sent as they happen",
    Capability.BULK: "Bulk: changes are queued and uploaded at intervals",
    Capability.CREATES_AUDIENCE: "creates its audience on connect",
    Capability.LISTS_MEMBERS: "its members can be read back",
    Capability.REPORTS_COUNT: "reports its own count",
}
OPTIONAL_CAPABILITIES = (Capability.CREATES_AUDIENCE, Capability.LISTS_MEMBERS, Capability.REPORTS_COUNT)


def delivery_label(partner: type[Partner]) -> str:
    label = CAPABILITY_LABELS[partner.rhythm()]
    criteria = partner.default_upload_criteria
    if partner.has(Capability.BULK) and criteria is not None:
        minutes = int(criteria.wait.total_seconds() // 60)
        label += f" (every {minutes} min or {criteria.messages:,} changes, whichever comes first)"
    return label


@admin.register(Output)
class OutputAdmin(admin.ModelAdmin):
    list_display = ("name", "partner_name", "updated_at")
    list_filter = ("partner_key",)
    search_fields = ("name",)

    # --- the directory -------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        # Before the default URLs: "<path:object_id>/" would swallow "directory/".
        directory = path("directory/", self.admin_site.admin_view(self.directory_view), name="outputs_output_directory")
        return [directory, *super().get_urls()]

    def directory_view(self, request: HttpRequest) -> HttpResponse:
        """Every partner this service can forward to, each with an "Add output" button."""
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        configured = dict(Output.objects.values_list("partner_key").annotate(n=Count("id")).order_by())
        add_url = reverse("admin:outputs_output_add")
        partners = [
            {
                "key": key,
                "name": cls.name,
                "description": cls.description,
                "pattern": CAPABILITY_LABELS[cls.pattern()],
                "identity_types": sorted(cls.accepted_identity_types),
                "delivery_mode": delivery_label(cls),
                "abilities": [CAPABILITY_LABELS[c] for c in OPTIONAL_CAPABILITIES if cls.has(c)],
                "configuration_settings": [s.label for s in cls.configuration_settings],
                "connection_settings": [s.label for s in cls.connection_settings],
                "configured": configured.get(key, 0),
                "add_url": f"{add_url}?{urlencode({'partner': key})}",
            }
            for key, cls in sorted(PARTNERS.items(), key=lambda item: item[1].name.lower())
        ]
        context = {
            **self.admin_site.each_context(request),
            "title": "Directory",
            "subtitle": None,
            "opts": self.opts,
            "partners": partners,
            "has_add_permission": self.has_add_permission(request),
        }
        return TemplateResponse(request, "admin/outputs/output/directory.html", context)

    # --- add / change --------------------------------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        # As in the tutorial, an output starts from a partner chosen in the directory.
        key = request.GET.get("partner", "")
        if key not in PARTNERS:
            if key:
                messages.error(request, f"Unknown partner '{key}'. Choose one from the directory.")
            return redirect("admin:outputs_output_directory")
        return super().add_view(request, form_url, extra_context)

    def _partner(self, request: HttpRequest, obj: Output | None) -> type[Partner]:
        # The partner is fixed once the output exists; before, it is the ?partner= of the add URL.
        if obj is not None:
            return obj.partner_class
        return get_partner_class(request.GET.get("partner", ""))

    def get_form(self, request: HttpRequest, obj: Output | None = None, change: bool = False, **kwargs: Any):
        kwargs["form"] = output_form_for(self._partner(request, obj))
        return super().get_form(request, obj, change, **kwargs)

    def get_fieldsets(self, request: HttpRequest, obj: Output | None = None) -> list[tuple[str | None, dict]]:
        partner = self._partner(request, obj)
        general = ["partner_summary", "name"]
        if obj is not None:
            general += ["secrets_set", "created_at", "updated_at"]
        fieldsets: list[tuple[str | None, dict]] = [(None, {"fields": general})]
        if partner.configuration_settings:
            settings_fieldset = {
                "fields": [s.name for s in partner.configuration_settings],
                "description": f"Settings of your {partner.name} account. Secrets are stored encrypted "
                "and never shown again.",
            }
            fieldsets.append(("Configuration Settings", settings_fieldset))
        return fieldsets

    def get_readonly_fields(self, request: HttpRequest, obj: Output | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("partner_summary",)
        return ("partner_summary", "secrets_set", "created_at", "updated_at")

    @admin.display(description="partner")
    def partner_summary(self, obj: Output) -> str:
        partner = obj.partner_class
        if obj.pk is None:
            return format_html(
                '<strong>{}</strong> — {} (<a href="{}">choose another partner</a>)',
                partner.name,
                partner.description,
                reverse("admin:outputs_output_directory"),
            )
        return format_html("<strong>{}</strong> — {}", partner.name, partner.description)

    @admin.display(description="partner", ordering="partner_key")
    def partner_name(self, obj: Output) -> str:
        # The key is a plain string (no choices frozen in a migration): its name comes from the registry.
        try:
            return obj.partner_class.name
        except LookupError:
            return f"{obj.partner_key} (not installed)"

    @admin.display(description="secrets set")
    def secrets_set(self, obj: Output) -> str:
        labels = {s.name: s.label for s in obj.partner_class.configuration_settings}
        names = [labels.get(name, name) for name in obj.secret_names_set()]
        return ", ".join(names) or "None"

    def save_model(self, request: HttpRequest, obj: Output, form: Any, change: bool) -> None:
        # Already saved by output_create / output_update while the form validated (config/admin_forms.py).
        pass
