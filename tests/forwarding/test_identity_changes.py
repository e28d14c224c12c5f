"""A member who gains or loses an identity of an accepted type is an add or a remove of that identity alone
(issue 11 item 4): the member's other identities are neither sent again nor removed. Through the REST API,
against the local Mailchimp server (the `server` fixture), on real PostgreSQL."""

from __future__ import annotations

import pytest

from audiences import profiles
from audiences.models import Identity
from forwarding.delivery import deliver_connection
from forwarding.models import PendingChange
from tests import factories
from tests.fixtures.api import errors

PROFILES = "/api/v1/profiles/"


@pytest.fixture
def ann(server, db):
    """Ann, a member holding two emails, both delivered to the list "old"."""
    audience = factories.active_audience()
    profile = factories.parisian("ann@x.com")
    profiles.profile_upsert(
        identities=[{"type": "email", "value": "ann@x.com"}, {"type": "email", "value": "ann@work.com"}]
    )
    connection = factories.connect(audience, factories.mailchimp_output(), list_id="old")
    deliver_connection(connection_id=connection.pk)
    assert statuses(server) == {"ann@x.com": "subscribed", "ann@work.com": "subscribed"}
    return profile, connection


def statuses(server) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in server.members("old").values()}


def test_a_member_who_gains_an_email_is_an_add_of_that_email_alone(api, ann):
    body = {"identities": [{"type": "email", "value": "ann@x.com"}, {"type": "email", "value": "ann@home.com"}]}
    assert api.post(PROFILES, body, format="json").status_code == 200

    assert list(PendingChange.objects.values_list("value", "action")) == [("ann@home.com", "add")]


def test_a_member_who_loses_an_email_is_a_remove_of_that_email_alone(api, ann, server):
    profile, connection = ann

    response = api.post(
        f"{PROFILES}{profile.pk}/remove-identity/", {"type": "email", "value": "Ann@Work.com "}, format="json"
    )

    assert response.status_code == 200, response.json()
    assert [i["value"] for i in response.json()["identities"]] == ["ann@x.com"]
    assert list(PendingChange.objects.values_list("value", "action")) == [("ann@work.com", "remove")]
    deliver_connection(connection_id=connection.pk)
    assert statuses(server) == {"ann@x.com": "subscribed", "ann@work.com": "unsubscribed"}


def test_losing_a_non_accepted_identity_sends_nothing(api, ann):
    profile, _ = ann
    profiles.profile_upsert(identities=[{"type": "email", "value": "ann@x.com"}, {"type": "customer", "value": "c-9"}])
    PendingChange.objects.all().delete()

    response = api.post(f"{PROFILES}{profile.pk}/remove-identity/", {"type": "customer", "value": "c-9"}, format="json")

    assert response.status_code == 200
    assert not PendingChange.objects.exists()  # Mailchimp takes emails only


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "email", "value": "nobody@x.com"}, "value"),
        ({"type": "telepathy", "value": "x"}, "type"),
        ({"type": "email", "value": "not an email"}, "value"),
        ({"type": "email"}, "value"),
        ({"type": "email", "value": "ann@x.com", "why": "moved"}, "why"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(api, ann, body, field):
    profile, _ = ann
    response = api.post(f"{PROFILES}{profile.pk}/remove-identity/", body, format="json")
    assert list(errors(response)) == [field]
    assert Identity.objects.filter(profile=profile).count() == 2


def test_the_last_identity_stays_and_an_unknown_profile_is_a_404(api, ann):
    profile, _ = ann
    api.post(f"{PROFILES}{profile.pk}/remove-identity/", {"type": "email", "value": "ann@work.com"}, format="json")
    last = api.post(f"{PROFILES}{profile.pk}/remove-identity/", {"type": "email", "value": "ann@x.com"}, format="json")
    assert "erase the profile instead" in errors(last)["value"][0]
    missing = api.post(
        f"{PROFILES}{profile.pk + 999}/remove-identity/", {"type": "email", "value": "a@x.com"}, format="json"
    )
    assert missing.status_code == 404


def test_the_profile_page_removes_an_identity_alone(admin_client, ann, server):
    profile, connection = ann
    page = admin_client.get(f"/admin/audiences/profile/{profile.pk}/change/").content.decode()
    assert 'id="remove-identities"' in page
    work = Identity.objects.get(value="ann@work.com")

    response = admin_client.post(f"/admin/audiences/profile/{profile.pk}/remove-identity/", {"identity": work.pk})

    assert response.status_code == 302
    assert list(PendingChange.objects.values_list("value", "action")) == [("ann@work.com", "remove")]
    deliver_connection(connection_id=connection.pk)
    assert statuses(server) == {"ann@x.com": "subscribed", "ann@work.com": "unsubscribed"}
    # One identity left: nothing more to remove from the page.
    assert (
        'id="remove-identities"'
        not in admin_client.get(f"/admin/audiences/profile/{profile.pk}/change/").content.decode()
    )
