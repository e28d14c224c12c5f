"""Bulk connect (forwarding/admin/bulk_connect.py): many audiences connected to one output in one admin
action, the settings tested once, drafts and audiences already connected left out and said so. Against the
local Mailchimp server."""

# ruff: noqa: F811 (the fixtures imported from test_admin are parameters of the tests below)
from __future__ import annotations

import pytest

from audiences.services import audience_create
from audiences.splits import audience_split
from connections.models import Connection
from forwarding.models import PendingChange
from tests.factories import role_user
from tests.forwarding.test_admin import (  # noqa: F401  (fixtures shared with the admin's tutorial tests)
    LIST_ID,
    PARISIANS,
    audience,
    local_mailchimp,
    output,
)

pytestmark = pytest.mark.django_db
CHANGELIST = "/admin/audiences/audience/"


def test_the_variations_of_a_split_are_connected_to_one_output_in_one_action(
    admin_client, audience, output, local_mailchimp, rings
):
    a, b = audience_split(audience=audience, percentages=[50, 50])
    draft = audience_create(name="Draft", criteria=PARISIANS)
    selected = [a.pk, b.pk, draft.pk]

    response = admin_client.post(CHANGELIST, {"action": "connect_to_output", "_selected_action": selected})
    assert response.status_code == 302
    step = response["Location"]
    assert admin_client.get(step).status_code == 200  # the outputs to choose from
    page = admin_client.get(f"{step}&output={output.pk}")
    assert LIST_ID in dict(page.context["form"].fields["list_id"].choices)

    response = admin_client.post(f"{step}&output={output.pk}", {"list_id": LIST_ID}, follow=True)

    assert set(Connection.objects.values_list("audience_id", flat=True)) == {a.pk, b.pk}
    said = [str(m) for m in response.context["messages"]]
    assert said[0].startswith("Connected 2 audiences to “Mailchimp”")
    assert said[1].startswith("“Draft” was not connected: a draft")
    # Each connection queued its variation's members (the one-connection backfill).
    assert PendingChange.objects.count() == sum(
        c.audience.memberships.filter(profile__identities__type="email").count() for c in Connection.objects.all()
    )


def test_a_list_not_among_the_partners_connects_nothing(admin_client, audience, output, local_mailchimp):
    url = f"/admin/audiences/audience/connect-many/?audiences={audience.pk}&output={output.pk}"
    response = admin_client.post(url, {"list_id": "not-listed"})
    assert "list_id" in response.context["form"].errors
    assert not Connection.objects.exists()


def test_only_those_who_may_connect_get_the_action_and_the_page(client, audience, output):
    client.force_login(role_user("viewer"))
    action_form = client.get(CHANGELIST).context["action_form"]
    assert action_form is None or "connect_to_output" not in dict(action_form.fields["action"].choices)
    assert client.get(f"/admin/audiences/audience/connect-many/?audiences={audience.pk}").status_code == 403
    client.force_login(role_user("marketer"))
    assert "connect_to_output" in dict(client.get(CHANGELIST).context["action_form"].fields["action"].choices)
