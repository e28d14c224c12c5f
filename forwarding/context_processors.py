"""The admin's banner of faulted connections (templates/admin/base_site.html), on every admin page."""

from __future__ import annotations

from django.http import HttpRequest
from django.utils.functional import SimpleLazyObject

from connections.models import Connection

BANNER_LIMIT = 5


def faulted_connections(request: HttpRequest) -> dict[str, object]:
    """The faulted connections, for staff who may view connections. Lazy: read only by a page that shows
    the banner (the admin's), never by the API or the Events API."""

    def read() -> dict[str, object]:
        user = getattr(request, "user", None)
        if not (user and user.is_active and user.is_staff and user.has_perm("connections.view_connection")):
            return {"count": 0, "shown": []}
        faulted = Connection.objects.filter(status=Connection.Status.FAULTED).select_related("audience", "output")
        shown = list(faulted.order_by("status_changed_at", "id")[:BANNER_LIMIT])
        count = len(shown) if len(shown) < BANNER_LIMIT else faulted.count()
        return {"count": count, "shown": shown}

    return {"faulted_connections": SimpleLazyObject(read)}
