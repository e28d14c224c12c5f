"""Splitting an audience into variations (audiences/splits.py) and its admin page."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audiences import profiles
from audiences.membership.recompute import recompute_audience
from audiences.models import Audience, AudienceMembership
from audiences.splits import audience_split, parse_percentages
from tests import factories
from tests.factories import role_user

pytestmark = pytest.mark.django_db


def members(audience: Audience) -> set[int]:
    return set(AudienceMembership.objects.filter(audience=audience).values_list("profile_id", flat=True))


def test_the_variations_partition_the_audience_and_follow_it_in_real_time():
    audience = factories.active_audience()
    for i in range(40):
        factories.parisian(f"p{i}@x.com")
    factories.profile(email="lyon@x.com", status="Premium", favourite_city="Lyon")

    a, b = audience_split(audience=audience, percentages=[50, 50])
    for variation in (a, b):
        recompute_audience(variation.pk)

    assert (a.name, b.name) == ("Potential Parisians — A (50%)", "Potential Parisians — B (50%)")
    assert a.status == b.status == "active"
    assert members(a) | members(b) == members(audience) and not members(a) & members(b)
    assert members(a) and members(b)
    # A new member lands in exactly one variation at once (real-time evaluation, dependants after the audience).
    newcomer = factories.parisian("new@x.com")
    assert (newcomer.pk in members(a)) != (newcomer.pk in members(b))
    # A member who leaves the audience leaves its variation.
    profiles.profile_upsert(identities=[{"type": "email", "value": "new@x.com"}], attributes={"status": "Free"})
    assert newcomer.pk not in members(a) | members(b)


def test_splitting_again_with_the_same_shares_puts_each_profile_in_the_same_variation():
    audience = factories.active_audience()
    for i in range(30):
        factories.parisian(f"p{i}@x.com")
    first = audience_split(audience=audience, percentages=[30, 70])
    for index, variation in enumerate(first):
        Audience.objects.filter(pk=variation.pk).update(name=f"old {index}")  # free the names
    second = audience_split(audience=audience, percentages=[30, 70])
    for variation in (*first, *second):
        recompute_audience(variation.pk)
    assert members(first[0]) == members(second[0]) and members(first[1]) == members(second[1])


@pytest.mark.parametrize("percentages", [[], [0, 50], [60, 50], [10, 10, 10, 10, 10, 10], [True]])
def test_shares_are_checked(percentages):
    audience = factories.active_audience()
    with pytest.raises(ValidationError) as caught:
        audience_split(audience=audience, percentages=percentages)
    assert "percentages" in caught.value.message_dict
    assert Audience.objects.count() == 1


def test_percentages_are_read_from_text():
    assert parse_percentages("50, 30;20") == [50, 30, 20]
    with pytest.raises(ValidationError):
        parse_percentages("50, half")


def test_the_split_page_creates_the_variations_for_who_may_add_audiences(client):
    audience = factories.active_audience()
    url = f"/admin/audiences/audience/{audience.pk}/split/"
    client.force_login(role_user("viewer"))
    assert client.get(url).status_code == 403
    assert (
        "Split into variations" not in client.get(f"/admin/audiences/audience/{audience.pk}/change/").content.decode()
    )

    client.force_login(role_user("marketer"))
    assert "Split into variations" in client.get(f"/admin/audiences/audience/{audience.pk}/change/").content.decode()
    assert "percentages" in client.post(url, {"percentages": "80, 30"}).context["form"].errors
    response = client.post(url, {"percentages": "10, 20, 70"})
    assert response.status_code == 302
    assert Audience.objects.filter(name__startswith="Potential Parisians — ").count() == 3
