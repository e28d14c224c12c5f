"""A Meta connection's life cycle on the real database, against the local Meta server over HTTP: connecting creates
the Custom Audience, an upload sends the coalesced outbox in sessions each closed by its last request, ending the
connection deletes the audience (or removes its members when the output keeps audiences)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError

from audiences import profiles
from connections.models import Connection
from forwarding import bulk, lifecycle
from forwarding.models import DeliveryAttempt
from local_partners.meta import LocalMetaServer
from outputs.partners.meta import EMAIL_SHA256, MOBILE_ADVERTISER_ID, sha256
from outputs.services import output_create
from tests import factories
from tests.fixtures.api import errors

pytestmark = pytest.mark.django_db
TOKEN = "meta-token"
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


@pytest.fixture
def server(settings) -> Iterator[LocalMetaServer]:
    with LocalMetaServer(access_tokens=[TOKEN]) as srv:
        settings.PARTNER_API_BASE_URLS = {"meta": srv.base_url}
        yield srv


def meta_output(name: str = "Meta", **settings):
    values = {"access_token": TOKEN, "ad_account_id": "act_42", **settings}
    return output_create(name=name, partner_key="meta", settings=values)


@pytest.fixture
def audience(rings):
    factories.parisian("One@Example.com", gaid=GAID)
    factories.parisian("two@example.com")
    factories.profile(email="lyon@example.com", status="Premium", favourite_city="Lyon")
    return factories.active_audience()


def connect(audience, output) -> Connection:
    return lifecycle.connection_create(audience=audience, output=output, settings={})


def test_connecting_creates_the_custom_audience_and_keeps_its_id(server, audience):
    connection = connect(audience, meta_output(customer_file_source="BOTH_USER_AND_PARTNER_PROVIDED"))
    audience_id = connection.settings["audience_id"]
    assert connection.settings["created_on_connect"] is True
    created = server.audiences()[audience_id]
    assert created["name"] == audience.partner_name and created["account_id"] == "42"
    assert created["customer_file_source"] == "BOTH_USER_AND_PARTNER_PROVIDED"


def test_a_refused_create_connects_nothing_and_names_the_output(server, audience):
    with pytest.raises(ValidationError) as error:
        connect(audience, meta_output(access_token="expired"))
    assert "could not create the audience" in error.value.message_dict["output"][0]
    assert not Connection.objects.exists() and server.audiences() == {}


def test_connecting_twice_creates_nothing_more(server, audience):
    output = meta_output()
    connect(audience, output)
    with pytest.raises(ValidationError):
        connect(audience, output)
    assert len(server.audiences()) == 1


def test_an_upload_sends_the_outbox_as_one_session_of_hashed_rows(server, audience):
    connection = connect(audience, meta_output())
    audience_id = connection.settings["audience_id"]
    report = bulk.upload_connection(connection_id=connection.pk)
    assert report.delivered == 3
    assert server.members(audience_id, EMAIL_SHA256) == {sha256("one@example.com"), sha256("two@example.com")}
    assert server.members(audience_id, MOBILE_ADVERTISER_ID) == {GAID}
    sessions = [u["session"] for u in server.uploads]
    assert len({s["session_id"] for s in sessions}) == 1  # one batch, one session for its adds
    assert sorted(s["batch_seq"] for s in sessions) == [1, 2]  # one request per schema
    assert [s["last_batch_flag"] for s in sorted(sessions, key=lambda s: s["batch_seq"])] == [False, True]
    assert {s["estimated_num_total"] for s in sessions} == {3}


def test_every_session_of_an_upload_is_closed_when_its_last_rows_are_skipped(server, audience, monkeypatch):
    """Several batches, the last ones sending nothing (numbers Meta cannot match, removals of identities it never
    held): each session the upload opened still ends with a request flagged last, sized by what it carried."""
    monkeypatch.setattr("outputs.partners.meta.Meta.batch_limit", 2)
    connection = connect(audience, meta_output())
    for number in ("0612345678", "0698765432"):  # national numbers, no default country code: not sent
        profiles.profile_upsert(
            identities=[{"type": "mobile_number", "value": number}],
            attributes={"status": "Premium", "favourite_city": "Paris"},
        )
    factories.parisian("brief@example.com")
    profiles.profile_upsert(identities=[{"type": "email", "value": "brief@example.com"}], attributes={"status": "Free"})

    report = bulk.upload_connection(connection_id=connection.pk)

    assert report.batches >= 3 and report.delivered == 3 and report.rejected == 2 and report.skipped == 1
    assert server.sessions() and server.open_sessions() == []
    for session in server.sessions():
        assert session["received"] == session["estimated_num_total"]


def test_ending_the_connection_deletes_the_audience_it_created(server, audience):
    connection = connect(audience, meta_output())
    bulk.upload_connection(connection_id=connection.pk)
    lifecycle.connection_delete(connection=connection)
    assert lifecycle.connection_end(connection_id=connection.pk) == "deleted"
    assert server.audiences() == {}
    assert not [u for u in server.uploads if u["method"] == "DELETE"]  # no member removed one by one


def test_ending_a_connection_whose_output_keeps_audiences_removes_its_members(server, audience):
    connection = connect(audience, meta_output(delete_audience_on_end=False))
    audience_id = connection.settings["audience_id"]
    bulk.upload_connection(connection_id=connection.pk)
    lifecycle.connection_delete(connection=connection)
    assert lifecycle.connection_end(connection_id=connection.pk) == "deleted"
    assert audience_id in server.audiences() and server.members(audience_id) == set()


def test_a_refused_delete_keeps_the_connection_ending_and_records_why(server, audience):
    connection = connect(audience, meta_output())
    lifecycle.connection_delete(connection=connection)
    server.revoke_token(TOKEN)
    assert lifecycle.connection_end(connection_id=connection.pk).startswith("retrying in")
    attempt = DeliveryAttempt.objects.get(connection=connection, kind="cleanup")
    assert attempt.error_code == "190/463"
    assert Connection.objects.get(pk=connection.pk).status == Connection.Status.ENDING
    assert len(server.audiences()) == 1


def test_the_api_connects_meta_and_a_refused_create_is_a_400_naming_the_output(server, audience, api):
    refused = api.post(
        "/api/v1/connections/",
        {"audience": audience.pk, "output": meta_output(name="Expired", access_token="expired").pk, "settings": {}},
        format="json",
    )
    assert refused.status_code == 400
    assert "could not create the audience" in errors(refused)["output"][0]
    answer = api.post(
        "/api/v1/connections/", {"audience": audience.pk, "output": meta_output().pk, "settings": {}}, format="json"
    )
    assert answer.status_code == 201, answer.content
    assert answer.json()["settings"]["audience_id"] in server.audiences()
