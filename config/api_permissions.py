"""The REST API's permission check: Django's model permissions, per action, as in the admin.

Each viewset declares `permissions_by_action = {action: (permission, ...)}` (config/roles.py names
the custom ones, and AnyOf for "any one of these"). A user needs to be an active staff user, as for
the admin, and to hold every permission of the action; an action a viewset does not declare is
refused, so a new endpoint is closed until someone decides who may use it. Unauthenticated requests
answer 401, the rest 403.
"""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import MethodNotAllowed
from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from config.roles import AnyOf, holds


def required_permissions(view: Any, method: str) -> tuple[str | AnyOf, ...] | None:
    """The permissions `view.action` needs, or None when the action is not declared.

    OPTIONS (DRF's "metadata" action) describes the endpoint: it needs what reading it needs, and DRF asks
    again as POST and PUT to list only the forms this user may send.
    """
    declared: dict[str, tuple[str | AnyOf, ...]] = getattr(view, "permissions_by_action", {})
    action = getattr(view, "action", None)
    if action == "metadata":
        read = "retrieve" if getattr(view, "detail", False) else "list"
        action = {"POST": "create", "PUT": "update"}.get(method, read)
    return declared.get(action) if action else None


class ActionPermissions(BasePermission):
    message = "You do not have permission to perform this action."

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        if not (user and user.is_authenticated and user.is_active and user.is_staff):
            return False
        action_map = getattr(view, "action_map", None)  # a viewset's routes
        if action_map is not None and view.action is None and request.method.lower() not in action_map:
            # A method this URL does not take: say so (405), as DRF's own permission classes do.
            raise MethodNotAllowed(request.method)
        needed = required_permissions(view, request.method)
        return needed is not None and holds(user, needed)
