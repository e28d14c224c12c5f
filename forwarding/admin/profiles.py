"""The profile's page, extended with what each partner holds for it: per connection and identity, delivered,
pending (add or remove, retrying with the last error), rejected with the partner's reason, or removed.

audiences/admin.py defines the profile admin without it (audiences knows nothing downstream of it); this
module replaces that registration with a subclass, as forwarding/admin/audiences.py does for audiences."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Q
from django.http import HttpRequest, HttpResponse
from django.urls import reverse

from audiences.admin import ProfileAdmin
from audiences.models import Profile
from config.display import when
from connections.models import Connection, ConnectionMember
from forwarding.models import PendingChange

HELD_WORDS = {
    ConnectionMember.State.ADDED: "delivered",
    ConnectionMember.State.REMOVED: "removed",
    ConnectionMember.State.REJECTED: "rejected",
}


def partner_rows(profile: Profile) -> list[dict[str, Any]]:
    """Per connection that concerns the profile (of its audiences, or holding one of its identities): what the
    partner holds and what is still to send, per identity."""
    identities = list(profile.identities.values_list("type", "value"))
    matching = Q(pk__in=[])
    for identity_type, value in identities:
        matching |= Q(identity_type=identity_type, value=value)
    held = {(m.connection_id, m.identity_type, m.value): m for m in ConnectionMember.objects.filter(matching)}
    pending = {(p.connection_id, p.identity_type, p.value): p for p in PendingChange.objects.filter(matching)}
    connection_ids = {key[0] for key in (*held, *pending)} | set(
        Connection.objects.filter(audience__memberships__profile=profile).values_list("pk", flat=True)
    )
    rows = []
    for connection in Connection.objects.filter(pk__in=connection_ids).select_related("audience", "output"):
        accepted = connection.output.partner_class.accepted_identity_types
        states = []
        for identity_type, value in identities:
            key = (connection.pk, identity_type, value)
            member, change = held.get(key), pending.get(key)
            if member is None and change is None:
                continue
            words = []
            if member is not None:
                text = f"{HELD_WORDS[member.state]} {when(member.updated_at)}"
                if member.state == ConnectionMember.State.REJECTED and member.reason:
                    text += f": {member.reason}"
                words.append(text)
            if change is not None:
                text = f"pending {change.action}"
                if change.attempts:
                    text += f", retrying (attempt {change.attempts}: {change.last_error or 'no answer'})"
                words.append(text)
            states.append({"identity": f"{identity_type}: {value}", "state": "; ".join(words)})
        if not states:
            types = ", ".join(sorted(accepted))
            states.append({"identity": "—", "state": f"nothing to send: the partner accepts {types} identities only"})
        rows.append(
            {
                "connection": connection,
                "url": reverse("admin:connections_connection_change", args=[connection.pk]),
                "states": states,
            }
        )
    return rows


class ProfileWithPartnersAdmin(ProfileAdmin):
    change_form_template = "admin/audiences/profile/change_form_partners.html"

    def render_change_form(
        self,
        request: HttpRequest,
        context: dict[str, Any],
        add: bool = False,
        change: bool = False,
        form_url: str = "",
        obj: Profile | None = None,
    ) -> HttpResponse:
        # As the audience's Connections panel: to those who may view connections.
        if obj is not None and obj.pk and request.user.has_perm("connections.view_connection"):
            context["partner_rows"] = partner_rows(obj)
            context["show_partners"] = True
        return super().render_change_form(request, context, add, change, form_url, obj)


admin.site.unregister(Profile)
admin.site.register(Profile, ProfileWithPartnersAdmin)
