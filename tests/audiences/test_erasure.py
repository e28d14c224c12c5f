"""Data-subject erasure through the REST API and the admin (issue 9 item 6): find the profile by any
identity, erase it, answer the erasure record (no personal data); 400 naming the field, 404 when nobody
holds the identity. The outbox side is tested in tests/forwarding/test_erasure.py, end to end in
tests/e2e/test_erasure.py."""

from __future__ import annotations

import pytest
from django.urls import reverse

from audiences.models import Identity, Profile, ProfileErasure
from forwarding.models import PendingChange
from tests import factories
from tests.fixtures.api import errors

pytestmark = pytest.mark.django_db
EMAIL = "forget.me@example.com"
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


@pytest.fixture
def member(rings):
    audience = factories.active_audience()
    factories.connect(audience, factories.mailchimp_output())
    return factories.parisian(EMAIL, gaid=GAID)


def test_the_api_erases_a_profile_found_by_any_identity(api, member):
    response = api.post(
        "/api/v1/erasures/", {"identity_type": "google_advertising_id", "identity_value": GAID.upper()}, format="json"
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "removing" and body["source"] == "api"
    assert (body["identities"], body["audiences_left"], body["partner_removes"]) == (2, 1, 1)
    assert EMAIL not in response.content.decode() and GAID not in response.content.decode()
    assert not Profile.objects.filter(pk=member.pk).exists() and not Identity.objects.exists()
    assert PendingChange.objects.get().action == "remove"
    assert api.get(f"/api/v1/erasures/{body['id']}/").json() == body
    assert api.get("/api/v1/erasures/?status=removing").json()["count"] == 1

    # Asked again: nobody holds the identity any more.
    again = api.post("/api/v1/erasures/", {"identity_type": "email", "identity_value": EMAIL}, format="json")
    assert again.status_code == 404 and again.json()["code"] == "not_found"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"identity_type": "emial", "identity_value": EMAIL}, "identity_type"),
        ({"identity_type": "email", "identity_value": "not an email"}, "identity_value"),
        ({"identity_type": "email", "identity_value": ""}, "identity_value"),
        ({"identity_type": "email", "identity_value": "x" * 300}, "identity_value"),
        ({"identity_type": "email"}, "identity_value"),
        ({"identity_type": "email", "identity_value": EMAIL, "profile": 1}, "profile"),
        ({"identity_type": "email", "identity_value": ["a@x.com"]}, "identity_value"),
    ],
)
def test_a_bad_request_names_the_field_and_erases_nothing(api, member, body, field):
    response = api.post("/api/v1/erasures/", body, format="json")
    assert response.status_code == 400 and field in errors(response), response.content
    assert Profile.objects.filter(pk=member.pk).exists() and not ProfileErasure.objects.exists()


def test_the_admin_action_asks_for_confirmation_then_erases(client, member):
    changelist = reverse("admin:audiences_profile_changelist")
    operator = factories.role_user("operator")
    client.force_login(operator)
    offered = dict(client.get(changelist).context["action_form"].fields["action"].choices)
    assert "erase_profiles" in offered

    confirm = client.post(changelist, {"action": "erase_profiles", "_selected_action": [member.pk]})
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert Profile.objects.filter(pk=member.pk).exists()

    done = client.post(
        changelist, {"action": "erase_profiles", "_selected_action": [member.pk], "confirm": "yes"}, follow=True
    )
    assert "Erased 1 profile(s)" in done.content.decode() and "1 partner remove(s) planned" in done.content.decode()
    assert not Profile.objects.filter(pk=member.pk).exists()
    assert ProfileErasure.objects.get().source == "admin"
    assert reverse("admin:audiences_profileerasure_changelist")
    assert client.get(reverse("admin:audiences_profileerasure_changelist")).status_code == 200


def test_the_admin_action_is_only_for_who_may_erase(client, member):
    changelist = reverse("admin:audiences_profile_changelist")
    client.force_login(factories.role_user("marketer"))  # sees profiles, may not erase them
    form = client.get(changelist).context["action_form"]
    assert form is None or "erase_profiles" not in dict(form.fields["action"].choices)
    client.post(changelist, {"action": "erase_profiles", "_selected_action": [member.pk], "confirm": "yes"})
    assert Profile.objects.filter(pk=member.pk).exists() and not ProfileErasure.objects.exists()
