"""The output list, extended with each output's number of connections. outputs/admin.py defines the output
admin without it (outputs knows nothing downstream of it); this module replaces that registration with a
subclass, as forwarding/admin/audiences.py does for audiences."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from audiences.admin import count_of
from connections.models import Connection
from outputs.admin import OutputAdmin
from outputs.models import Output


class ConnectedOutputAdmin(OutputAdmin):
    list_display = (*OutputAdmin.list_display[:-1], "connections_count", OutputAdmin.list_display[-1])

    def get_queryset(self, request: HttpRequest) -> QuerySet[Output]:
        return super().get_queryset(request).annotate(connections_count=count_of(Connection, "output"))

    @admin.display(description="connections", ordering="connections_count")
    def connections_count(self, obj: Output) -> int:
        return obj.connections_count


admin.site.unregister(Output)
admin.site.register(Output, ConnectedOutputAdmin)
