"""The audience's page, extended with its connections: the Connections panel with each connection's figures,
and the tutorial's "Connect output" flow (choose an output, give its connection settings).

audiences/admin.py defines the audience admin without them (audiences knows nothing downstream of it);
this module replaces that registration with a subclass, the usual way to extend another app's admin.
"""

from __future__ import annotations

import json
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from audiences.admin import AudienceAdmin, count_of
from audiences.models import Audience
from config.request_parsing import id_from_query
from config.roles import TEST_CONNECTION, holds
from connections.models import Connection
from connections.selectors import connected_output_counts
from forwarding import labels
from forwarding.admin.bulk_connect import BulkConnectMixin, settings_form_context
from forwarding.forms import CONNECT, PREVIEW, TEST, ConnectSettingsForm
from forwarding.progress import sending_progress
from forwarding.selectors import connection_stats
from outputs.models import Output

# Beyond connections.add_connection, which the whole "Connect output" page needs (connecting asks the
# partner first, as part of connecting): its Test button is the connection's test, and its preview shows
# the first members' identities (personal data, as the REST API's members).
CONNECT_STEP_PERMISSIONS = {
    TEST: (TEST_CONNECTION,),
    PREVIEW: ("audiences.view_profile", "audiences.view_identity"),
}


class ConnectedAudienceAdmin(BulkConnectMixin, AudienceAdmin):
    change_form_template = "admin/audiences/audience/change_form_connections.html"
    list_display = (*AudienceAdmin.list_display[:-1], "connections_count", AudienceAdmin.list_display[-1])
    readonly_fields = (*AudienceAdmin.readonly_fields[:4], "connected_outputs", *AudienceAdmin.readonly_fields[4:])
    fieldsets = (*AudienceAdmin.fieldsets[:-1], ("Calculation", {"fields": readonly_fields}))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Audience]:
        return super().get_queryset(request).annotate(connections_count=count_of(Connection, "audience"))

    @admin.display(description="connections", ordering="connections_count")
    def connections_count(self, obj: Audience) -> int:
        return getattr(obj, "connections_count", 0)

    @admin.display(description="connected outputs")
    def connected_outputs(self, obj: Audience) -> int | str:
        if obj.pk is None:
            return "—"
        return connected_output_counts([obj.pk]).get(obj.pk, 0)

    # --- the Connections panel of the change page -------------------------------------------

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
            # The panel shows to those who may view connections (config/roles.py), as in the REST API.
            show_connections = request.user.has_perm("connections.view_connection")
            context["show_connections"] = show_connections
            context["connection_rows"] = (
                [
                    self.connection_row(connection)
                    for connection in Connection.objects.filter(audience=obj).select_related("output")
                ]
                if show_connections
                else []
            )
            context["connect_url"] = reverse("admin:audiences_audience_connect", args=[obj.pk])
            context["can_connect"] = request.user.has_perm("connections.add_connection")
        return super().render_change_form(request, context, add, change, form_url, obj)

    @staticmethod
    def connection_row(connection: Connection) -> dict[str, Any]:
        """One row of the Connections panel, its words from forwarding/labels.py."""
        stats = connection_stats(connection)
        return {
            "connection": connection,
            "stats": stats,
            "status_word": labels.status_word(connection),
            "status_detail": labels.status_detail(connection),
            "pending": labels.pending_summary(connection, stats),
            # A backfill after connecting (or any large batch): how far, at what rate, how long left.
            "progress": sending_progress(connection),
            "progress_url": reverse("admin:connections_connection_progress", args=[connection.pk]),
            "url": reverse("admin:connections_connection_change", args=[connection.pk]),
        }

    # --- "Connect output" -----------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        connect = path(
            "<path:object_id>/connect/",
            self.admin_site.admin_view(self.connect_view),
            name="audiences_audience_connect",
        )
        # Before the default URLs: "<path:object_id>/" would swallow it.
        return [connect, *super().get_urls()]

    def connect_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Step 1 lists the outputs (links to ?output=<id>); step 2 asks for that output's connection
        settings (the partner's list picked from its lists), and tests them, previews the first send, or
        connects (forwarding/forms.py), as the button pressed says."""
        audience = self.audience_for_page(request, object_id, permission="connections.add_connection")
        context = self.audience_page_context(request, audience, f"Connect an output to “{audience}”")
        output_id = id_from_query(request.GET.get("output"))  # "²" is a digit to str.isdigit(), not to int()
        if output_id is None:
            connected = dict(Connection.objects.filter(audience=audience).values_list("output_id", "pk"))
            context["outputs"] = [
                {
                    "output": output,
                    # An audience connects to an output once: link to the existing connection instead.
                    "connection_url": (
                        reverse("admin:connections_connection_change", args=[connected[output.pk]])
                        if output.pk in connected
                        else None
                    ),
                }
                for output in Output.objects.order_by("name")
            ]
            context["directory_url"] = reverse("admin:outputs_output_directory")
            return TemplateResponse(request, "admin/audiences/audience/connect_choose_output.html", context)

        output = get_object_or_404(Output, pk=output_id)
        posted = request.method == "POST"
        action = next((a for a in (TEST, PREVIEW) if posted and f"_{a}" in request.POST), CONNECT)
        allowed = {a: holds(request.user, needed) for a, needed in CONNECT_STEP_PERMISSIONS.items()}
        if not allowed.get(action, True):
            raise PermissionDenied
        form = ConnectSettingsForm(request.POST if posted else None, audience=audience, output=output, action=action)
        if posted and form.is_valid() and form.connection is not None:
            messages.success(
                request, f"Connected “{audience}” to “{output.name}”; its current members are queued for sending."
            )
            return redirect(f"{context['audience_url']}#connections")
        context.update(
            {
                "output": output,
                **settings_form_context(form),
                "choose_url": reverse("admin:audiences_audience_connect", args=[audience.pk]),
                "can_test": allowed[TEST],
                "can_preview": allowed[PREVIEW],
                "test_result": form.test_result,
                "accepted_types": ", ".join(sorted(output.partner_class.accepted_identity_types)),
                "preview": form.preview,
                "preview_json": json.dumps(form.preview.sample_request, indent=2, ensure_ascii=False)
                if form.preview and form.preview.sample_request
                else "",
            }
        )
        return TemplateResponse(request, "admin/audiences/audience/connect_settings.html", context)


admin.site.unregister(Audience)
admin.site.register(Audience, ConnectedAudienceAdmin)
