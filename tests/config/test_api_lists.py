"""DRF conventions of every list: django-filter filters, ordering, search, capped pages, and nothing
silently ignored (an unknown parameter or value is a 400 naming it)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from audiences import profiles
from audiences import services as audience_services
from audiences.models import Audience
from forwarding import lifecycle as connection_services
from forwarding.models import DeliveryAttempt
from outputs import services as output_services
from tests.fixtures.api import MAILCHIMP_KEY, PREMIUM, errors


def ids(response) -> list[int]:
    assert response.status_code == 200, response.json()
    return [item["id"] for item in response.json()["results"]]


@pytest.fixture
def audiences(db) -> dict[str, Audience]:
    return {
        name: audience_services.audience_create(name=name, criteria=PREMIUM, status=status, description=description)
        for name, status, description in [
            ("Paris lovers", "active", "they like Paris"),
            ("Rome lovers", "draft", "Roma"),
            ("Old Paris list", "archived", ""),
        ]
    }


def test_audiences_filter_by_status_and_name_search_and_order(api, audiences):
    url = "/api/v1/audiences/"
    paris, rome, old = (audiences[n].pk for n in ("Paris lovers", "Rome lovers", "Old Paris list"))

    assert ids(api.get(url, {"status": "active"})) == [paris]
    assert ids(api.get(url, {"name": "PARIS"})) == [old, paris]  # contains, case-insensitive; by name
    assert ids(api.get(url, {"name": "paris", "status": "archived"})) == [old]
    assert ids(api.get(url, {"search": "roma"})) == [rome]  # name, external name or description
    assert ids(api.get(url, {"ordering": "-name"})) == [rome, paris, old]
    assert ids(api.get(url, {"ordering": "status,-id"})) == [paris, old, rome]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"status": "deleted"}, "status"),
        ({"ordering": "criteria"}, "ordering"),
        ({"ordering": "-"}, "ordering"),
        ({"stauts": "active"}, "stauts"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "0"}, "limit"),
        ({"limit": "٣"}, "limit"),
        ({"offset": "-1"}, "offset"),
        ({"offset": "9" * 30}, "offset"),
    ],
)
def test_a_bad_parameter_is_a_400_naming_it(api, audiences, params, parameter):
    response = api.get("/api/v1/audiences/", params)

    assert response.status_code == 400
    assert list(errors(response)) == [parameter]


def test_pages_are_capped(api, audiences, monkeypatch):
    monkeypatch.setattr("config.api_lists.MAX_LIMIT", 2)

    body = api.get("/api/v1/audiences/", {"limit": 1000}).json()

    assert body["count"] == 3
    assert len(body["results"]) == 2
    assert "limit=2" in body["next"]


def test_default_page_is_100_and_the_cap_1000():
    from config.api_lists import CappedLimitOffsetPagination

    assert (CappedLimitOffsetPagination.default_limit, CappedLimitOffsetPagination.max_limit) == (100, 1000)


def test_connections_filter_by_audience_output_status_and_partner(api, audiences):
    first = output_services.output_create(name="A", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    second = output_services.output_create(name="B", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    paris, rome = audiences["Paris lovers"], audiences["Rome lovers"]
    one = connection_services.connection_create(audience=paris, output=first, settings={"list_id": "l1"})
    two = connection_services.connection_create(audience=rome, output=second, settings={"list_id": "l2"})
    connection_services.connection_pause(connection=two)
    url = "/api/v1/connections/"

    assert ids(api.get(url, {"audience": paris.pk})) == [one.pk]
    assert ids(api.get(url, {"output": second.pk})) == [two.pk]
    assert ids(api.get(url, {"status": "paused"})) == [two.pk]
    assert ids(api.get(url, {"partner": "mailchimp", "ordering": "-id"})) == [two.pk, one.pk]
    assert ids(api.get(url, {"search": "rome"})) == [two.pk]
    for params in ({"audience": 999999}, {"output": "x"}, {"status": "asleep"}, {"partner": "myspace"}):
        assert list(errors(api.get(url, params))) == list(params)


def test_outputs_filter_by_partner(api, db):
    output = output_services.output_create(name="A", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})

    assert ids(api.get("/api/v1/outputs/", {"partner": "mailchimp"})) == [output.pk]
    assert ids(api.get("/api/v1/outputs/", {"search": "a"})) == [output.pk]
    assert list(errors(api.get("/api/v1/outputs/", {"partner": "myspace"}))) == ["partner"]


def test_profiles_filter_by_audience_membership_and_identity(api, audiences):
    paris = audiences["Paris lovers"]  # active: upserts join it at once
    member = profiles.profile_upsert(
        identities=[{"type": "email", "value": "in@x.com"}], attributes={"plan": "premium"}
    ).profile
    outsider = profiles.profile_upsert(identities=[{"type": "customer", "value": "c-1"}]).profile
    url = "/api/v1/profiles/"

    assert ids(api.get(url, {"audience": paris.pk})) == [member.pk]
    assert ids(api.get(url, {"identity_type": "customer", "identity_value": "c-1"})) == [outsider.pk]
    assert ids(api.get(url, {"audience": paris.pk, "identity_type": "customer", "identity_value": "c-1"})) == []
    assert ids(api.get(url, {"ordering": "-id"})) == [outsider.pk, member.pk]
    assert list(errors(api.get(url, {"audience": 999999}))) == ["audience"]


def test_attempts_filter_by_outcome_and_time(api, connection):
    now = timezone.now()
    ok, failed, old = DeliveryAttempt.objects.bulk_create(
        [
            DeliveryAttempt(connection=connection, at=now, sent=1, result="ok"),
            DeliveryAttempt(connection=connection, at=now - timedelta(hours=1), sent=1, result="transient"),
            DeliveryAttempt(connection=connection, at=now - timedelta(days=2), sent=1, result="ok"),
        ]
    )
    url = f"/api/v1/connections/{connection.pk}/attempts/"
    yesterday = (now - timedelta(days=1)).isoformat()

    assert ids(api.get(url)) == [ok.pk, failed.pk, old.pk]  # newest first
    assert ids(api.get(url, {"result": "ok"})) == [ok.pk, old.pk]
    assert ids(api.get(url, {"at_after": yesterday})) == [ok.pk, failed.pk]
    assert ids(api.get(url, {"at_before": yesterday, "result": "ok"})) == [old.pk]
    assert ids(api.get(url, {"ordering": "at"})) == [old.pk, failed.pk, ok.pk]
    assert list(errors(api.get(url, {"result": "great"}))) == ["result"]
    assert list(errors(api.get(url, {"at_after": "yesterday"}))) == ["at_after"]


def test_a_time_with_an_offset_postgresql_refuses_is_compared_in_utc(api, connection):
    """Found by schemathesis: ?at_after=4155-11-10T05:24:03-21:21 was a 500 (PostgreSQL takes offsets up
    to ±15:59); a time that does not exist in UTC is a 400."""
    url = f"/api/v1/connections/{connection.pk}/attempts/"

    assert api.get(url, {"at_after": "4155-11-10T05:24:03-21:21"}).json()["count"] == 0
    assert list(errors(api.get(url, {"at_after": "9999-12-31T23:00:00-05:00"}))) == ["at_after"]


def test_a_list_parameter_does_not_apply_to_an_object(api, audiences):
    """DRF would filter the lookup of /audiences/{id}/ by the list's parameters (a 404)."""
    draft = audiences["Rome lovers"]

    assert api.get(f"/api/v1/audiences/{draft.pk}/", {"status": "active"}).status_code == 200
