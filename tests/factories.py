"""Small builders over the services, so tests create data the way users do."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from audiences import profiles
from audiences import services as audience_services
from audiences.models import Audience
from connections.models import Connection
from outputs.models import Output
from outputs.services import output_create

MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
PARISIANS = {
    "and": [
        {"attribute": "status", "operator": "equals", "value": "Premium"},
        {"attribute": "favourite_city", "operator": "equals", "value": "Paris"},
    ]
}


def mailchimp_output(name: str = "Mailchimp", **settings: Any) -> Output:
    values = {"api_key": MAILCHIMP_KEY, "email_type": "html", "double_opt_in": False, **settings}
    return output_create(name=name, partner_key="mailchimp", settings=values)


def active_audience(name: str = "Potential Parisians", criteria: dict | None = None) -> Audience:
    """An active audience with its membership computed now (no task in between)."""
    audience = audience_services.audience_create(name=name, criteria=criteria or PARISIANS, status="draft")
    audience = audience_services.audience_update(audience=audience, status="active")
    audience_services.audience_recompute(audience_id=audience.pk)
    audience.refresh_from_db()
    return audience


def profile(*, email: str | None = None, gaid: str | None = None, **attributes: Any):
    identities = []
    if email:
        identities.append({"type": "email", "value": email})
    if gaid:
        identities.append({"type": "google_advertising_id", "value": gaid})
    if not identities:
        identities.append({"type": "customer", "value": f"c-{len(str(attributes))}-{id(attributes)}"})
    return profiles.profile_upsert(identities=identities, attributes=attributes).profile


def parisian(email: str | None, **extra: Any):
    return profile(email=email, status="Premium", favourite_city="Paris", **extra)


def connect(audience: Audience, output: Output, list_id: str = "list1") -> Connection:
    from forwarding.lifecycle import connection_create

    return connection_create(audience=audience, output=output, settings={"list_id": list_id})


def role_user(role: str | None, *, is_staff: bool = True):
    """A user in one of the ready groups (config/roles.py), or in none with role=None."""
    # No password (nothing to hash): tests log in with force_login or a token.
    user = get_user_model().objects.create_user(
        f"{role or 'nobody'}-{'staff' if is_staff else 'user'}", is_staff=is_staff
    )
    if role is not None:
        user.groups.add(Group.objects.get(name=role))
    return user


def bulk_connection(audience: Audience) -> Connection:
    """The audience connected to an output of the tests' bulk partner (tests/fakes/partners.py: registered)."""
    from forwarding.lifecycle import connection_create
    from tests.fakes.partners import BulkListPartner

    output = output_create(name="Bulk", partner_key=BulkListPartner.key, settings={})
    return connection_create(audience=audience, output=output, settings={})
