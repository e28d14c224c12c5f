"""Connections in the admin: figures, recent deliveries and rejections, and the status switch
(Pause / Resume / Test connection / Delete), every change through forwarding.lifecycle; for a bulk
connection its uploads (criteria, backlog, next and last upload), "Upload now" and its upload criteria's
page, through forwarding.bulk.

The buttons and actions check the same permissions as the REST API (config/roles.py): pause and
resume need connections.pause_connection, the test connections.test_connection; the recent attempts
and rejections show to those who may view delivery attempts and connection members."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from audiences.admin import TimestampsAdminMixin, count_of
from audiences.models import Audience
from config.admin_forms import add_service_errors
from config.api_errors import ConflictError
from config.display import number, when
from config.request_parsing import id_from_query
from config.roles import PAUSE_CONNECTION, TEST_CONNECTION
from connections import status
from connections.models import Connection, ConnectionMember
from connections.selectors import rejected_members
from forwarding import bulk, labels, sync
from forwarding.forms import EditSettingsForm, UploadCriteriaForm
from forwarding.funnel import IdentityFunnel, identity_funnel
from forwarding.history import connection_charts
from forwarding.lifecycle import (
    connection_delete,
    connection_pause,
    connection_resume,
    connection_settings_preview,
    connection_settings_update,
    connection_test,
)
from forwarding.models import ConnectionJob, DeliveryAttempt, PendingChange
from forwarding.progress import sending_progress
from forwarding.selectors import connection_stats, pending_due_count

RECENT_ROWS = 20
STATS_LABELS = (
    ("audience_size", "Audience size"),
    ("with_accepted_identity", "Members with an accepted identity"),
    ("without_accepted_identity", "Members without one (the partner cannot receive them)"),
    ("delivered", "Delivered (identities the partner holds)"),
    ("pending", "Pending"),
    ("rejected", "Rejected by the partner"),
    ("fields_skipped", "Delivered with fields skipped (values the partner refused, e.g. merge fields)"),
)


def funnel_context(funnel: IdentityFunnel) -> dict[str, Any]:
    """The funnel section of the connection's page: a row per step with its bar's width (relative to the
    largest figure shown, so a member's several identities may make a step wider than the audience), and the
    partner's own count as the last row when the partner reports one."""
    shown = [stage.count for stage in funnel.stages]
    count = funnel.partner_count
    if count.available and count.count is not None:
        shown.append(count.count)
    widest = max(shown) or 1
    rows = [
        {
            "label": stage.label,
            "count": stage.count,
            "unit": stage.unit,
            "width": round(100 * stage.count / widest, 1),
            "lost": stage.lost,
            "by_type": stage.by_type if len(stage.by_type) > 1 else {},
        }
        for stage in funnel.stages
    ]
    partner_width = round(100 * count.count / widest, 1) if count.available and count.count is not None else 0
    return {
        "funnel": funnel,
        "funnel_rows": rows,
        "partner_count_width": partner_width,
    }


@admin.register(Connection)
class ConnectionAdmin(TimestampsAdminMixin, admin.ModelAdmin):
    list_display = (
        "audience",
        "output",
        "status_short",
        "delivered_count",
        "pending_count",
        "rejected_count",
        "last_delivered",
    )
    list_filter = ("status", "output")
    list_select_related = ("audience", "output")
    search_fields = ("audience__name", "output__name")
    actions = ("pause_connections", "resume_connections", "resync_connections", "reconcile_connections")
    # Everything is read-only: settings are fixed at creation, the status moves by the buttons.
    fieldsets = (
        (None, {"fields": ("audience_link", "output_link", "settings_display")}),
        ("Status", {"fields": ("status_display", "last_delivered")}),
        ("Figures", {"fields": ("stats_display",)}),
        (None, {"fields": ("created", "updated")}),
    )
    # Shown for a connection of a bulk partner only (get_fieldsets).
    upload_fieldset = ("Uploads", {"fields": ("upload_display",)})
    readonly_fields = (
        "audience_link",
        "output_link",
        "settings_display",
        "status_display",
        "last_delivered",
        "stats_display",
        "upload_display",
        "created",
        "updated",
    )

    def get_fieldsets(self, request: HttpRequest, obj: Connection | None = None) -> Any:
        fieldsets = list(super().get_fieldsets(request, obj))
        if obj is not None and bulk.is_bulk(obj):
            fieldsets.insert(3, self.upload_fieldset)
        return fieldsets

    def get_queryset(self, request: HttpRequest) -> QuerySet[Connection]:
        return (
            super()
            .get_queryset(request)
            .select_related("audience", "output")
            .annotate(
                delivered_count=count_of(ConnectionMember, "connection", state=ConnectionMember.State.ADDED),
                rejected_count=count_of(ConnectionMember, "connection", state=ConnectionMember.State.REJECTED),
                pending_count=count_of(PendingChange, "connection"),
            )
        )

    @admin.display(description="delivered", ordering="delivered_count")
    def delivered_count(self, obj: Connection) -> str:
        return number(obj.delivered_count)

    @admin.display(description="pending", ordering="pending_count")
    def pending_count(self, obj: Connection) -> str:
        return number(obj.pending_count)

    @admin.display(description="rejected", ordering="rejected_count")
    def rejected_count(self, obj: Connection) -> str:
        return number(obj.rejected_count)

    # --- the state, in labels.py's words ------------------------------------------------------

    @admin.display(description="status", ordering="status")
    def status_short(self, obj: Connection) -> str:
        return labels.status_word(obj)

    @admin.display(description="status")
    def status_display(self, obj: Connection) -> str:
        detail = labels.status_detail(obj)
        return format_html("<strong>{}</strong>{}", labels.status_word(obj), f" {detail}" if detail else "")

    @admin.display(description="last delivered", ordering="last_delivered_at")
    def last_delivered(self, obj: Connection) -> str:
        return when(obj.last_delivered_at) if obj.last_delivered_at else "never"

    # --- read-only fields of the change page ------------------------------------------------

    @admin.display(description="audience")
    def audience_link(self, obj: Connection) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:audiences_audience_change", args=[obj.audience_id]), obj.audience
        )

    @admin.display(description="output")
    def output_link(self, obj: Connection) -> str:
        return format_html(
            '<a href="{}">{}</a>', reverse("admin:outputs_output_change", args=[obj.output_id]), obj.output
        )

    @admin.display(description="connection settings")
    def settings_display(self, obj: Connection) -> str:
        schema = {s.name: s for s in obj.output.partner_class.connection_settings}
        rows = []
        for name, value in obj.settings.items():
            setting = schema.get(name)
            shown = "••••••" if setting is not None and setting.is_secret else json.dumps(value, ensure_ascii=False)
            rows.append((setting.label if setting else name, shown.strip('"')))
        if not rows:
            return "None"
        return format_html("<table>{}</table>", format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows))

    @admin.display(description="figures")
    def stats_display(self, obj: Connection) -> str:
        stats = connection_stats(obj)
        shown = {k: number(v) for k, v in stats.as_dict().items()} | {"pending": labels.pending_summary(obj, stats)}
        rows = format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", ((label, shown[k]) for k, label in STATS_LABELS))
        return format_html('<table id="connection-stats">{}</table>', rows)

    @admin.display(description="uploads")
    def upload_display(self, obj: Connection) -> str:
        state = bulk.upload_status(obj)
        if state is None:
            return "None: the partner receives changes in real time."
        rows = [
            ("Upload criteria", labels.upload_criteria_text(state)),
            ("Waiting (backlog)", labels.upload_backlog_text(state)),
            ("Next upload", labels.next_upload_text(obj, state)),
            ("Last upload", labels.last_upload_text(state.last_upload)),
        ]
        return format_html(
            '<table id="connection-uploads">{}</table>', format_html_join("", "<tr><th>{}</th><td>{}</td></tr>", rows)
        )

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Connection | None = None,
    ) -> HttpResponse:
        if obj is not None and obj.pk:
            can_switch = self.has_pause_permission(request)
            context.update(
                {
                    # Not "Change connection": nothing here is edited in a form.
                    "title": "Connection",
                    "show_attempts": request.user.has_perm("forwarding.view_deliveryattempt"),
                    "attempts": DeliveryAttempt.objects.filter(connection=obj).order_by("-at", "-id")[:RECENT_ROWS],
                    "show_rejections": request.user.has_perm("connections.view_connectionmember"),
                    "rejections": rejected_members(obj)[:RECENT_ROWS],
                    "recent_rows": RECENT_ROWS,
                    "is_ending": not status.can_delete(obj.status),
                    "can_pause": can_switch and status.can_pause(obj.status),
                    "can_resume": can_switch and status.can_resume(obj.status),
                    "can_test": self.has_test_permission(request) and status.can_test(obj.status),
                    "is_bulk": bulk.is_bulk(obj),
                    "can_upload": can_switch and bulk.is_bulk(obj) and status.delivers(obj.status),
                    "can_edit_criteria": can_switch and bulk.is_bulk(obj) and status.can_delete(obj.status),
                    "progress": sending_progress(obj),
                    "can_edit_settings": bool(obj.output.partner_class.connection_settings)
                    and self.has_change_permission(request, obj)
                    and status.can_delete(obj.status),
                    "jobs": ConnectionJob.objects.filter(connection=obj)[:5],
                    "progress_url": reverse("admin:connections_connection_progress", args=[obj.pk]),
                    "history_charts": connection_charts(obj.pk),
                    **funnel_context(identity_funnel(obj)),
                    # Nothing on this page is editable, so there is nothing to save.
                    "show_save": False,
                    "show_save_and_continue": False,
                    "show_save_and_add_another": False,
                }
            )
        return super().render_change_form(request, context, add, change, form_url, obj)

    def save_model(self, request: HttpRequest, obj: Connection, form: Any, change: bool) -> None:
        # Never write the row from the admin: a stale copy would undo the worker's status and lease.
        pass

    # --- the status switch ------------------------------------------------------------------

    def get_urls(self) -> list[URLPattern]:
        def button(name: str, view: Callable[[HttpRequest, str], HttpResponse]) -> URLPattern:
            return path(
                f"<path:object_id>/{name}/",
                self.admin_site.admin_view(require_POST(view)),
                name=f"connections_connection_{name}",
            )

        # Before the default URLs: "<path:object_id>/" would swallow them.
        return [
            button("pause", self.pause_view),
            button("resume", self.resume_view),
            button("test", self.test_view),
            button("upload-now", self.upload_now_view),
            path(
                "<path:object_id>/upload-criteria/",
                self.admin_site.admin_view(self.upload_criteria_view),
                name="connections_connection_upload_criteria",
            ),
            path(
                "<path:object_id>/settings/",
                self.admin_site.admin_view(self.settings_view),
                name="connections_connection_settings",
            ),
            path(
                "<path:object_id>/progress/",
                self.admin_site.admin_view(self.progress_view),
                name="connections_connection_progress",
            ),
            *super().get_urls(),
        ]

    def progress_view(self, request: HttpRequest, object_id: str) -> JsonResponse:
        """The sending progress as JSON, polled by forwarding/static/forwarding/progress.js."""
        connection = self._connection_for(request, object_id, lambda r: self.has_view_permission(r))
        return JsonResponse(sending_progress(connection).as_dict())

    # The custom permissions, as admin actions read them (`permissions=["pause"]`).
    def has_pause_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(PAUSE_CONNECTION)

    def has_test_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(TEST_CONNECTION)

    def _connection_for(
        self, request: HttpRequest, object_id: str, allowed: Callable[[HttpRequest], bool]
    ) -> Connection:
        connection = self.get_object(request, unquote(object_id))
        if connection is None:
            raise Http404("No such connection.")
        if not allowed(request):
            raise PermissionDenied
        return connection

    def _back(self, connection: Connection) -> HttpResponseRedirect:
        return redirect("admin:connections_connection_change", connection.pk)

    def pause_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        connection = self._connection_for(request, object_id, self.has_pause_permission)
        if not status.can_pause(connection.status):  # e.g. a page left open while the connection faulted
            messages.warning(request, f"Not paused: the connection is {labels.status_word(connection).lower()}.")
            return self._back(connection)
        try:
            connection_pause(connection=connection)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
        else:
            self.log_change(request, connection, "Paused.")
            messages.success(request, "Paused: changes are kept and sent when you resume.")
        return self._back(connection)

    def resume_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Resume says what it did: a faulted connection is first tested with the partner (a refusal leaves
        it faulted, and says so); then how many pending changes are due now, from the status read again.
        The test is part of resuming: pausing and resuming is the permission asked."""
        connection = self._connection_for(request, object_id, self.has_pause_permission)
        if connection.status == Connection.Status.FAULTED:
            ok, partner_words = connection_test(connection=connection)
            if not ok:
                messages.error(request, labels.resume_refused(partner_words))
                return self._back(connection)
        try:
            connection = connection_resume(connection=connection)
        except ValidationError as exc:
            messages.error(request, " ".join(exc.messages))
            return self._back(connection)
        resumed, message = labels.resume_outcome(connection, pending_due_count(connection))
        if resumed:
            self.log_change(request, connection, "Resumed.")
        messages.add_message(request, messages.SUCCESS if resumed else messages.WARNING, message)
        return self._back(connection)

    def test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        connection = self._connection_for(request, object_id, self.has_test_permission)
        ok, message = connection_test(connection=connection)
        messages.add_message(request, messages.SUCCESS if ok else messages.ERROR, message)
        return self._back(connection)

    def upload_now_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Queue an upload of what waits now, whatever the criteria (the API's POST /upload-now/)."""
        connection = self._connection_for(request, object_id, self.has_pause_permission)
        try:
            waiting = bulk.upload_now(connection=connection)
        except ConflictError as exc:
            messages.error(request, f"Not uploaded: {exc}")
        else:
            self.log_change(request, connection, "Upload started.")
            messages.success(request, f"Uploading now: {number(waiting)} waiting change{'s' if waiting != 1 else ''}.")
        return self._back(connection)

    def upload_criteria_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """A bulk connection's own upload criteria: a small form, empty fields for the partner's defaults."""
        connection = self._connection_for(request, object_id, self.has_pause_permission)
        if not bulk.is_bulk(connection):
            messages.error(
                request, "This connection's partner receives changes in real time: it has no upload criteria."
            )
            return self._back(connection)
        form = UploadCriteriaForm(request.POST if request.method == "POST" else None, connection=connection)
        if request.method == "POST" and form.is_valid():
            self.log_change(request, connection, "Upload criteria changed.")
            messages.success(
                request, f"Upload criteria saved: {labels.upload_criteria_text(bulk.upload_status(connection))}."
            )
            return self._back(connection)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Upload criteria of {connection}",
            "subtitle": None,
            "opts": self.opts,
            "original": connection,
            "form": form,
        }
        return TemplateResponse(request, "admin/connections/connection/upload_criteria.html", context)

    def settings_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Edit the settings in two steps: the form, then what saving does (a new Mailchimp list is backfilled,
        the old one cleaned with Delete on Subscription End), confirmed before anything is written."""
        connection = self._connection_for(request, object_id, lambda r: self.has_change_permission(r))
        if not status.can_delete(connection.status):
            messages.warning(request, "This connection is being deleted: its settings cannot change.")
            return self._back(connection)
        form = EditSettingsForm(request.POST or None, connection=connection)
        edit = None
        if request.method == "POST" and form.is_valid():
            try:
                if "confirm" in request.POST:
                    done = connection_settings_update(connection=connection, settings=form.settings_values())
                    self.log_change(request, connection, f"Settings edited: {' '.join(done.sentences)}")
                    messages.success(request, "Saved. " + " ".join(done.sentences))
                    return self._back(connection)
                if "back" not in request.POST:
                    edit = connection_settings_preview(connection=connection, settings=form.settings_values())
            except ValidationError as exc:
                add_service_errors(form, exc)
                edit = None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Edit the settings of {connection}",
            "opts": self.opts,
            "connection": connection,
            "form": form,
            "edit": edit,
        }
        return TemplateResponse(request, "admin/connections/connection/edit_settings.html", context)

    @admin.action(description="Resync: send only what our records say the partner lacks", permissions=["change"])
    def resync_connections(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        def said(result: sync.ResyncResult) -> str:
            return (
                f"{number(result.adds_planned)} adds and {number(result.removes_planned)} removes planned "
                "(the difference between the audience and what the partner holds from us)."
            )

        self._run_for_each(request, queryset, sync.connection_resync, said, "Resynced.")

    @admin.action(description="Reconcile with what the partner holds (reads it back)", permissions=["change"])
    def reconcile_connections(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        def said(job: ConnectionJob) -> str:
            return f"reconcile {job.get_status_display().lower()}; its progress is on the connection's page."

        self._run_for_each(request, queryset, sync.connection_reconcile_start, said, "Reconcile queued.")

    def _run_for_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Connection],
        service: Callable[..., Any],
        said: Callable[[Any], str],
        logged: str,
    ) -> None:
        """Run a life-cycle service on each selected connection, saying for each what it did or why not."""
        for connection in queryset:
            try:
                outcome = service(connection=connection)
            except ValidationError as exc:
                messages.error(request, f"{connection}: {' '.join(exc.messages)}")
                continue
            self.log_change(request, connection, logged)
            messages.success(request, f"{connection}: {said(outcome)}")

    @admin.action(description="Pause selected connections", permissions=["pause"])
    def pause_connections(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        self._apply_to_each(request, queryset, connection_pause, "Paused", status.can_pause)

    @admin.action(description="Resume selected connections", permissions=["pause"])
    def resume_connections(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        self._apply_to_each(request, queryset, connection_resume, "Resumed", status.can_resume)

    def _apply_to_each(
        self,
        request: HttpRequest,
        queryset: QuerySet[Connection],
        service: Callable[..., Connection],
        verb: str,
        applies: Callable[[str], bool],
    ) -> None:
        done = 0
        for connection in queryset:
            if not applies(connection.status):
                # Said, not done: e.g. pausing a faulted connection, or resuming one that is sending.
                messages.warning(request, f"{connection}: not {verb.lower()}, it is {labels.status_word(connection)}.")
                continue
            try:
                service(connection=connection)
            except ValidationError as exc:
                messages.error(request, f"{connection}: {' '.join(exc.messages)}")
            else:
                self.log_change(request, connection, f"{verb}.")
                done += 1
        if done:
            messages.success(request, f"{verb} {done} connection{'s' if done != 1 else ''}.")

    # --- add: the audience's "Connect output" flow ------------------------------------------

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: dict | None = None) -> HttpResponse:
        """Connections are made from an audience (as in the tutorial): pick one, or go straight
        to its "Connect output" page with ?audience=<id>."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        audience_id = id_from_query(request.GET.get("audience"))
        if audience_id is not None:
            return redirect("admin:audiences_audience_connect", audience_id)
        context = {
            **self.admin_site.each_context(request),
            "title": "Connect an audience: choose the audience",
            "subtitle": None,
            "opts": self.opts,
            "audiences": Audience.objects.exclude(status=Audience.Status.ARCHIVED).order_by("name"),
        }
        return TemplateResponse(request, "admin/connections/connection/choose_audience.html", context)

    # --- delete: the connection ends, a task cleans up, then the row goes --------------------

    def has_delete_permission(self, request: HttpRequest, obj: Connection | None = None) -> bool:
        if obj is not None and not status.can_delete(obj.status):
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request: HttpRequest, obj: Connection) -> None:
        self._end(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Connection]) -> None:
        for connection in queryset:
            self._end(request, connection)
        # The stock action goes on to say "deleted"; say what really happens.
        self.message_user(request, "The connections are ending: they are removed once the partner is cleaned up.")

    def _end(self, request: HttpRequest, connection: Connection) -> None:
        try:
            connection_delete(connection=connection)
        except ValidationError as exc:  # e.g. deleted meanwhile by someone else
            self.message_user(request, f"{connection}: {' '.join(exc.messages)}", messages.WARNING)

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[str], dict[str, int], set[str], list[str]]:
        # The stock page would list every member and pending change (perhaps millions); the
        # service removes those itself, so name only the connections.
        objs = list(objs)
        perms_needed = set() if self.has_delete_permission(request) else {str(self.opts.verbose_name)}
        model_count = {str(self.opts.verbose_name_plural): len(objs)}
        return [str(obj) for obj in objs], model_count, perms_needed, []

    def response_delete(self, request: HttpRequest, obj_display: str, obj_id: Any) -> HttpResponse:
        self.message_user(
            request,
            f"The connection “{obj_display}” is ending: it sends nothing more, and is removed once the "
            "partner has been cleaned up (where the output's settings ask for it).",
            messages.SUCCESS,
        )
        return redirect("admin:connections_connection_changelist")
