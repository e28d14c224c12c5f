"""The profile's page: why it is in each audience (the conditions that held, audiences/criteria/explain.py),
its recent events, what each partner holds for it (forwarding's extension), search by part of an identity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from audiences import profiles
from audiences.criteria.explain import conditions_held
from audiences.criteria.facts import EventFact, ProfileFacts
from audiences.models import Event
from connections.models import ConnectionMember
from tests import factories
from tests.factories import role_user

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 15, 12, tzinfo=UTC)


def test_explain_names_the_conditions_that_held_and_those_excluded():
    tree = {
        "and": [
            {"attribute": "status", "operator": "equals", "value": "Premium"},
            {"or": [
                {"attribute": "city", "operator": "equals", "value": "Paris"},
                {"identity": "email", "operator": "exists"},
            ]},
            {"exclude": {"attribute": "banned", "operator": "exists"}},
            {"event": "purchase"},
            {"split": "s", "buckets": [0, 100]},
        ]
    }  # fmt: skip
    facts = ProfileFacts(
        profile_id=7,
        attributes={"status": "premium", "city": "Lyon"},
        identities=[("email", "a@x.com")],
        events=[
            EventFact("purchase", {}, NOW - timedelta(days=1)),
            EventFact("purchase", {}, NOW - timedelta(days=99)),
        ],
    )  # fmt: skip

    held = conditions_held(tree, facts, NOW)

    assert [(c.node.get("attribute") or c.node.get("identity") or c.node.get("event") or "split", c.held, c.seen)
            for c in held] == [
        ("status", True, "premium"),
        ("email", True, None),  # of the `or`, only what held: the city did not
        ("banned", False, None),
        ("purchase", True, 1),  # one purchase inside the 30 days
        ("split", True, held[-1].seen),
    ]  # fmt: skip
    assert conditions_held(tree, ProfileFacts(profile_id=7, attributes={}), NOW) == []


def test_the_profile_page_says_why_it_is_in_each_audience_its_events_and_what_the_partner_holds(client, rings):
    audience = factories.active_audience()
    connection = factories.connect(audience, factories.mailchimp_output())
    profile = factories.parisian("a@x.com", gaid="38400000-8cf0-11bd-b23e-10b96e40000d")
    Event.objects.create(
        profile=profile, event_type="custom_event", name="Destination Intro", attributes={"city": "Paris"},
        timestamp=timezone.now(), received_at=timezone.now(),
    )  # fmt: skip
    other = factories.parisian("b@x.com")
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="b@x.com", state="rejected",
        reason="looks fake", updated_at=timezone.now(),
    )  # fmt: skip
    client.force_login(role_user("marketer"))

    page = client.get(reverse("admin:audiences_profile_change", args=[profile.pk])).content.decode()

    assert "Potential Parisians" in page
    assert "status is &quot;Premium&quot; (its value: &quot;Premium&quot;)" in page
    assert "Destination Intro" in page  # recent events
    assert "pending add" in page  # the partner has not been sent a@x.com yet
    assert 'id="partners"' in page
    page = client.get(reverse("admin:audiences_profile_change", args=[other.pk])).content.decode()
    assert "rejected" in page and "looks fake" in page


def test_profiles_are_found_by_part_of_an_identity(admin_client):
    profiles.profile_upsert(identities=[{"type": "email", "value": "traveller007@example.com"}])
    profiles.profile_upsert(identities=[{"type": "email", "value": "someone@else.org"}])

    found = admin_client.get(reverse("admin:audiences_profile_changelist"), {"q": "AVELLER00"}).content.decode()

    assert "traveller007@example.com" in found
    assert "someone@else.org" not in found
