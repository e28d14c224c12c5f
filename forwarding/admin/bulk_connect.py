"""Bulk connect: many audiences connected to one output in one admin action (e.g. the variations of an
A/B split, audiences/splits.py). The audience list's action leads to a page choosing the output, then its
connection settings (the partner's list picked from its lists, as on the one-audience connect page); the
settings are tested with the partner once, then each audience is connected in its own transaction, and the
page says which were connected and why any was not (a draft, an audience already connected to it)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from audiences.models import Audience
from connections.models import Connection
from connections.validation import clean_connection_settings
from forwarding.forms import CONNECT, ConnectSettingsForm
from forwarding.lifecycle import connection_create
from forwarding.preview import connection_settings_test
from outputs.forms import add_service_errors
from outputs.models import Output

CONNECT_PERMISSION = "connections.add_connection"
MAX_AUDIENCES = 100  # per action: each connection queues its audience's whole membership


def settings_form_context(form: ConnectSettingsForm) -> dict[str, Any]:
    """The form as the admin's fieldset template shows it: one "Connection Settings" fieldset, its errors."""
    fieldsets = [("Connection Settings", {"fields": list(form.fields)})] if form.fields else []
    return {
        "form": form,
        "adminform": admin.helpers.AdminForm(form, fieldsets, {}),
        "errors": admin.helpers.AdminErrorList(form, []),
    }


class BulkConnectForm(ConnectSettingsForm):
    """The output's connection settings, tested once, then used for every audience."""

    def __init__(self, *args: Any, audiences: list[Audience], output: Output, **kwargs: Any) -> None:
        super().__init__(*args, audience=audiences[0], output=output, action=CONNECT, **kwargs)
        self.fields.pop("confirm_draft", None)  # drafts are left out, and said so
        self.audiences = audiences
        self.connected: list[Connection] = []
        self.refused: list[tuple[Audience, str]] = []

    def _post_clean(self) -> None:
        if self.errors:
            return
        try:
            settings = clean_connection_settings(output=self.output, settings=self.settings_values())
            ok, message = connection_settings_test(output=self.output, settings=settings)
            if not ok:
                field = self.output.partner_class.destination_setting or None
                raise ValidationError({field: [f"{message} Nothing was saved."]} if field else [message])
        except ValidationError as exc:
            add_service_errors(self, exc)
            return
        for audience in self.audiences:
            if audience.status == Audience.Status.DRAFT:
                self.refused.append(
                    (audience, "a draft has no members: activate it first, or connect it from its page")
                )
                continue
            try:
                self.connected.append(connection_create(audience=audience, output=self.output, settings=settings))
            except ValidationError as exc:
                self.refused.append((audience, " ".join(exc.messages)))


class BulkConnectMixin:
    """For the audience admin: the list action and the page it leads to."""

    actions = ("connect_to_output",)

    def has_connect_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(CONNECT_PERMISSION)

    @admin.action(description="Connect the selected audiences to one output", permissions=["connect"])
    def connect_to_output(self, request: HttpRequest, queryset: QuerySet[Audience]) -> HttpResponseRedirect:
        ids = sorted(queryset.values_list("pk", flat=True))[:MAX_AUDIENCES]
        return redirect(f"{reverse('admin:audiences_audience_connect_many')}?audiences={','.join(map(str, ids))}")

    def get_urls(self) -> list[URLPattern]:
        many = path(
            "connect-many/", self.admin_site.admin_view(self.connect_many_view), name="audiences_audience_connect_many"
        )
        return [many, *super().get_urls()]

    def connect_many_view(self, request: HttpRequest) -> HttpResponse:
        if not (self.has_view_permission(request) and self.has_connect_permission(request)):
            raise PermissionDenied
        raw = request.GET.get("audiences", "")
        ids = [int(part) for part in raw.split(",") if part.strip().isdigit()][:MAX_AUDIENCES]
        audiences = list(Audience.objects.filter(pk__in=ids).order_by("name"))
        changelist = reverse("admin:audiences_audience_changelist")
        if not audiences:
            messages.warning(request, "Select the audiences to connect in the list first.")
            return redirect(changelist)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Connect {len(audiences)} audiences to one output",
            "opts": self.opts,
            "audiences": audiences,
            "changelist_url": changelist,
            "audiences_query": ",".join(str(a.pk) for a in audiences),
        }
        output_id = request.GET.get("output", "")
        if not output_id.isdigit():
            context["outputs"] = Output.objects.order_by("name")
            return TemplateResponse(request, "admin/audiences/audience/connect_many.html", context)
        output = get_object_or_404(Output, pk=output_id)
        posted = request.method == "POST"
        form = BulkConnectForm(request.POST if posted else None, audiences=audiences, output=output)
        if posted and form.is_valid():
            if form.connected:
                messages.success(
                    request,
                    f"Connected {len(form.connected)} audiences to “{output.name}”; "
                    "their members are queued for sending.",
                )
            for audience, reason in form.refused:
                messages.warning(request, f"“{audience}” was not connected: {reason}")
            return redirect(changelist)
        context.update({"output": output, **settings_form_context(form)})
        return TemplateResponse(request, "admin/audiences/audience/connect_many.html", context)
