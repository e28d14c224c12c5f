from __future__ import annotations

import pytest
from django.db import connection as db_connection
from django.test.utils import CaptureQueriesContext

from audiences import profiles, services
from audiences.models import Audience, AudienceMembership
from tests.fixtures.api import PREMIUM, errors

URL = "/api/v1/audiences/"


def member(email: str, plan: str = "premium") -> int:
    return profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"plan": plan}).profile.pk


def test_create_audience(api):
    response = api.post(
        URL,
        {"name": " Premium users ", "criteria": PREMIUM, "description": "Paying", "external_name": "VIP"},
        format="json",
    )

    assert response.status_code == 201, response.data
    body = response.json()
    audience = Audience.objects.get()
    assert body == {
        "id": audience.pk,
        "name": "Premium users",
        "external_name": "VIP",
        "description": "Paying",
        "status": "draft",
        "criteria": PREMIUM,
        "criteria_version": 1,
        "last_calculated_at": None,
        "size": 0,
        "adds_24h": 0,
        "drops_24h": 0,
        "volatility": 0.0,
        "evaluation_error": "",
        "evaluation_failed_at": None,
        "recompute_error": "",
        "recompute_failed_at": None,
        "recompute_failures": 0,
        "recompute_retry_at": None,
        "connected_outputs": 0,
        "connections": [],
    }


def test_invalid_criteria_names_the_path(api):
    criteria = {"and": [{"attribute": "plan", "operator": "bogus", "value": "x"}]}

    response = api.post(URL, {"name": "A", "criteria": criteria}, format="json")

    assert response.status_code == 400
    assert set(errors(response)) == {"criteria"}
    assert errors(response)["criteria"][0].startswith("criteria.and[0].operator")
    assert not Audience.objects.exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101, "criteria": PREMIUM}, "name"),
        ({"name": "  ", "criteria": PREMIUM}, "name"),
        ({"criteria": PREMIUM}, "name"),
        ({"name": "A"}, "criteria"),
        ({"name": "A", "criteria": PREMIUM, "status": "live"}, "status"),
        ({"name": "A", "criteria": PREMIUM, "external_name": "x" * 101}, "external_name"),
        ({"name": "A", "criteria": PREMIUM, "colour": "red"}, "colour"),
    ],
)
def test_invalid_create_names_the_field(api, body, field):
    response = api.post(URL, body, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    assert not Audience.objects.exists()


def test_duplicate_name_is_refused(api, audience):
    response = api.post(URL, {"name": audience.name, "criteria": PREMIUM}, format="json")

    assert response.status_code == 400
    assert "already exists" in errors(response)["name"][0]


def test_list_counts_sizes_in_one_query_per_page(api, audience):
    member("a@x.com")
    member("b@x.com")
    member("c@x.com", plan="free")
    empty = services.audience_create(name="Empty", criteria={"and": []})

    with CaptureQueriesContext(db_connection) as few:
        response = api.get(URL)
    for n in range(5):
        services.audience_create(name=f"More {n}", criteria={"and": []})
    with CaptureQueriesContext(db_connection) as many:
        api.get(URL)

    assert response.status_code == 200
    sizes = {a["id"]: a["size"] for a in response.json()["results"]}
    assert sizes == {audience.pk: 2, empty.pk: 0}
    assert len(many) == len(few)


def test_retrieve_shows_size_and_connections(api, connection):
    member("a@x.com")

    body = api.get(f"{URL}{connection.audience_id}/").json()

    assert body["size"] == 1
    assert body["connections"] == [connection.pk]


def test_patch_updates_only_what_is_sent(api, audience):
    response = api.patch(
        f"{URL}{audience.pk}/",
        {"criteria": {"attribute": "plan", "operator": "contains", "value": "prem"}, "size": 99},
        format="json",
    )

    assert response.status_code == 200, response.data
    body = response.json()
    assert body["name"] == "Premium"
    assert body["criteria_version"] == 2
    assert body["size"] == 0  # read-only fields sent back are ignored
    audience.refresh_from_db()
    assert audience.criteria["operator"] == "contains"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "x" * 101}, "name"),
        ({"criteria": {"or": "plan"}}, "criteria"),
        ({"status": "gone"}, "status"),
        ({"nmae": "typo"}, "nmae"),
    ],
)
def test_invalid_patch_names_the_field(api, audience, body, field):
    response = api.patch(f"{URL}{audience.pk}/", body, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    audience.refresh_from_db()
    assert audience.name == "Premium"
    assert audience.criteria_version == 1


def test_archiving_a_connected_audience_is_refused(api, connection):
    response = api.patch(f"{URL}{connection.audience_id}/", {"status": "archived"}, format="json")

    assert response.status_code == 400
    assert errors(response)["status"] == ["This audience has connections: remove them before archiving it."]


def test_put_requires_name_and_criteria_and_keeps_what_is_not_sent(api, audience):
    response = api.put(f"{URL}{audience.pk}/", {"name": "B", "criteria": PREMIUM}, format="json")

    assert response.status_code == 200, response.json()
    audience.refresh_from_db()
    assert audience.name == "B"
    assert audience.status == Audience.Status.ACTIVE
    assert audience.criteria_version == 1  # the same criteria: nothing to recompute
    assert set(errors(api.put(f"{URL}{audience.pk}/", {"name": "C"}, format="json"))) == {"criteria"}


def test_delete_is_refused_while_connected(api, connection):
    response = api.delete(f"{URL}{connection.audience_id}/")

    assert response.status_code == 409
    assert response.json()["code"] == "conflict"
    assert "connections" in response.json()["detail"]
    assert Audience.objects.filter(pk=connection.audience_id).exists()


def test_delete_unconnected_audience(api, audience):
    member("a@x.com")

    response = api.delete(f"{URL}{audience.pk}/")

    assert response.status_code == 204
    assert not Audience.objects.exists()
    assert not AudienceMembership.objects.exists()


def test_members_are_paginated(api, audience):
    ids = [member(f"{n}@x.com") for n in range(3)]
    member("free@x.com", plan="free")

    response = api.get(f"{URL}{audience.pk}/members/", {"limit": 2})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [m["profile"] for m in body["results"]] == ids[:2]
    assert set(body["results"][0]) == {"profile", "entered_at", "identities"}
    assert body["results"][0]["identities"] == [{"type": "email", "value": "0@x.com"}]
    assert body["next"]
