"""The outbox, the delivery log and the alerts, to look at: only the planner and the workers write them."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audiences.admin import ReadOnlyModelAdmin
from config.display import when
from forwarding import labels
from forwarding.models import ConnectionAlert, DeliveryAttempt, PendingChange


class RetryingFilter(admin.SimpleListFilter):
    title = "tried before"
    parameter_name = "retrying"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [("yes", "Tried before, after an error"), ("no", "Not tried yet")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[PendingChange]) -> QuerySet[PendingChange]:
        if self.value() == "yes":
            return queryset.filter(attempts__gt=0)
        if self.value() == "no":
            return queryset.filter(attempts=0)
        return queryset


@admin.register(PendingChange)
class PendingChangeAdmin(ReadOnlyModelAdmin):
    list_display = ("connection", "identity_type", "value", "action", "state", "next_attempt")
    list_filter = ("action", RetryingFilter, "connection__status", "connection", "identity_type")
    list_select_related = ("connection__audience", "connection__output")
    search_fields = ("=value",)
    ordering = ("next_attempt_at", "id")

    @admin.display(description="state")
    def state(self, obj: PendingChange) -> str:
        # Agrees with the last attempt and the connection's status (a faulted connection holds, not retries).
        return labels.pending_change_state(obj, obj.connection)

    @admin.display(description="next attempt", ordering="next_attempt_at")
    def next_attempt(self, obj: PendingChange) -> str:
        return when(obj.next_attempt_at)


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyModelAdmin):
    list_display = (
        "at",
        "connection",
        "kind",
        "result",
        "sent",
        "delivered",
        "rejected",
        "retried",
        "http_status",
        "error_code",
        "duration_ms",
        "task_id",
    )
    list_filter = ("result", "kind", "connection", "at")
    list_select_related = ("connection__audience", "connection__output")
    date_hierarchy = "at"


@admin.register(ConnectionAlert)
class ConnectionAlertAdmin(ReadOnlyModelAdmin):
    """The faults and recoveries told to the admins (forwarding/alerts.py), and whether each channel went out."""

    list_display = ("changed_at", "connection_name", "kind", "reason", "emailed_at", "webhook_at", "last_error")
    list_filter = ("kind", "partner", "changed_at")
    date_hierarchy = "changed_at"
