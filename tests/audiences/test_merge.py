"""Merging two profiles (audiences/merge.py): everything moves to the kept profile, the audiences are
re-evaluated, and what partners must now hold is queued; the REST endpoint and the conflict's resolution."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError

from audiences import profiles
from audiences.merge import conflict_resolve, profiles_merge
from audiences.models import AudienceMembership, Event, Identity, IdentityConflict, MembershipChange, Profile
from forwarding.models import PendingChange
from tests import factories
from tests.factories import role_user
from tests.fixtures.api import errors

pytestmark = pytest.mark.django_db


def person(email: str, **attributes) -> Profile:
    return profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes=attributes).profile


def pending() -> dict[str, str]:
    return dict(PendingChange.objects.values_list("value", "action"))


@pytest.fixture
def connected(rings):
    audience = factories.active_audience()  # status Premium and favourite_city Paris
    connection = factories.connect(audience, factories.mailchimp_output())
    return audience, connection


def test_merging_moves_identities_events_history_and_attributes_and_the_joined_profile_enters(connected):
    audience, _ = connected
    kept = person("a@x.com", status="Premium")
    other = person("b@x.com", status="Free", favourite_city="Paris", age=30)
    Event.objects.create(
        profile=other, event_type="custom_event", name="Destination Intro", timestamp=datetime.now(UTC),
        received_at=datetime.now(UTC),
    )  # fmt: skip
    other_history = MembershipChange.objects.filter(profile=other).count()

    result = profiles_merge(profile_id=kept.pk, other_id=other.pk)

    kept.refresh_from_db()
    assert not Profile.objects.filter(pk=other.pk).exists()
    assert set(kept.identities.values_list("value", flat=True)) == {"a@x.com", "b@x.com"}
    # The kept profile's values win; the other's fill the gaps.
    assert kept.attributes == {"status": "Premium", "favourite_city": "Paris", "age": 30}
    assert Event.objects.get().profile_id == kept.pk
    assert (result.identities_moved, result.events_moved, result.history_moved) == (1, 1, other_history)
    assert result.entered == [audience.pk]
    assert AudienceMembership.objects.filter(audience=audience, profile=kept).exists()
    assert pending() == {"a@x.com": "add", "b@x.com": "add"}


def test_a_member_merged_into_a_profile_that_does_not_match_is_removed_from_the_partner(connected):
    audience, _ = connected
    kept = person("a@x.com", status="Free", favourite_city="Paris")
    other = person("b@x.com", status="Premium", favourite_city="Paris")
    assert pending() == {"b@x.com": "add"}

    result = profiles_merge(profile_id=kept.pk, other_id=other.pk)

    assert result.entered == result.left == []
    assert not AudienceMembership.objects.filter(audience=audience).exists()
    assert pending() == {"b@x.com": "remove"}
    assert MembershipChange.objects.filter(profile=kept, kind="left", reason=f"merged into profile {kept.pk}").exists()


def test_when_both_are_members_the_kept_one_stays_and_the_partner_keeps_every_identity(connected):
    audience, _ = connected
    kept = person("a@x.com", status="Premium", favourite_city="Paris")
    other = person("b@x.com", status="Premium", favourite_city="Paris")
    PendingChange.objects.all().delete()  # as if delivered

    profiles_merge(profile_id=kept.pk, other_id=other.pk)

    assert list(AudienceMembership.objects.filter(audience=audience).values_list("profile_id", flat=True)) == [kept.pk]
    # b@x.com was removed (its profile left) then added again (its new profile stays): the last word is add.
    assert pending() == {"a@x.com": "add", "b@x.com": "add"}


def test_merging_a_profile_into_itself_or_a_missing_one_is_refused():
    kept = person("a@x.com")
    with pytest.raises(ValidationError) as same:
        profiles_merge(profile_id=kept.pk, other_id=kept.pk)
    assert "profile" in same.value.message_dict
    with pytest.raises(ValidationError) as missing:
        profiles_merge(profile_id=kept.pk, other_id=kept.pk + 1000)
    assert "profile" in missing.value.message_dict


def test_resolving_a_conflict_merges_its_profiles_into_the_chosen_one(connected):
    chosen = person("a@x.com", status="Premium")
    other = person("b@x.com", favourite_city="Paris")
    conflict = IdentityConflict.objects.create(
        at=datetime.now(UTC), identities=["email:a@x.com", "email:b@x.com"], profile_ids=[chosen.pk, other.pk],
        chosen_profile=chosen, not_attached=["email:b@x.com"], rule="highest priority identity",
    )  # fmt: skip

    results = conflict_resolve(conflict=conflict)

    conflict.refresh_from_db()
    assert [r.merged_profile_id for r in results] == [other.pk]
    assert conflict.resolved_at is not None
    assert conflict.resolution == f"merged profiles {other.pk} into {chosen.pk}"
    assert Identity.objects.get(value="b@x.com").profile_id == chosen.pk
    # Resolving again finds one profile left, and says so.
    assert conflict_resolve(conflict=conflict) == []


# --- POST /api/v1/profiles/{id}/merge/ ------------------------------------------------------


def test_the_merge_endpoint_merges_and_answers_the_kept_profile(api, rings):
    kept, other = person("a@x.com"), person("b@x.com")

    response = api.post(f"/api/v1/profiles/{kept.pk}/merge/", {"profile": other.pk}, format="json")

    assert response.status_code == 200, response.data
    assert response.data["merged_profile_id"] == other.pk
    assert response.data["profile"]["id"] == kept.pk
    assert {i["value"] for i in response.data["profile"]["identities"]} == {"a@x.com", "b@x.com"}


def test_the_merge_endpoint_names_the_field_at_fault(api):
    kept = person("a@x.com")
    url = f"/api/v1/profiles/{kept.pk}/merge/"
    for body in ({"profile": kept.pk}, {"profile": kept.pk + 1000}, {}, {"profile": "x"}, {"profile": 1, "x": 2}):
        response = api.post(url, body, format="json")
        assert response.status_code == 400, body
        assert set(errors(response)) <= {"profile", "x"} and errors(response), body
    assert api.post(f"/api/v1/profiles/{kept.pk + 1000}/merge/", {"profile": kept.pk}, format="json").status_code == 404


def test_conflict_admin_action_needs_the_merge_permission(client, rings):
    chosen, other = person("a@x.com"), person("b@x.com")
    conflict = IdentityConflict.objects.create(
        at=datetime.now(UTC), profile_ids=[chosen.pk, other.pk], chosen_profile=chosen, rule="r"
    )
    url = "/admin/audiences/identityconflict/"
    body = {"action": "merge_profiles", "_selected_action": [conflict.pk]}
    client.force_login(role_user("marketer"))
    assert client.post(url, body).status_code == 403  # marketers do not see conflicts
    client.force_login(role_user("operator"))
    assert client.post(url, body).status_code == 302
    assert not Profile.objects.filter(pk=other.pk).exists()
