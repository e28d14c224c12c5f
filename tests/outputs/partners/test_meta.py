"""The Meta Custom Audiences client against the Graph API contract (reference/PARTNERS.md, "Meta"), over real HTTP
to the local Meta server (local_partners/meta.py), which checks what Meta checks."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError

from local_partners.meta import LocalMetaServer, graph_error
from outputs.partners.base import Action, AudienceRef, Capability, MemberChange, Outcome
from outputs.partners.http import AuthError, PermanentError, TransientError
from outputs.partners.meta import (
    EMAIL_SHA256,
    MOBILE_ADVERTISER_ID,
    PHONE_SHA256,
    ROWS_PER_REQUEST,
    THROTTLE_DEFAULT_WAIT_SECONDS,
    Meta,
    hashed_row,
    normalise_phone,
)
from outputs.partners.registry import get_partner_class

TOKEN = "meta-system-user-token"
AUDIENCE = AudienceRef(id=7, name="Potential Parisians", external_name="Parisians")
# Known SHA-256 vectors of normalised values.
TEST_EMAIL_SHA256 = "973dfe463ec85785f5f95af5ba3906eedb2d931c24e69824a89ea65dba4e813b"  # test@example.com
US_PHONE_SHA256 = "6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599"  # 16505551234
FR_PHONE_SHA256 = "8a3e7886c9335e82e02299fa3e87b46e2de3b0c63d56003e30a5029394a47661"  # 33612345678
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


@pytest.fixture
def server(settings) -> Iterator[LocalMetaServer]:
    with LocalMetaServer(access_tokens=[TOKEN]) as srv:
        settings.PARTNER_API_BASE_URLS = {"meta": srv.base_url}
        yield srv


def partner(**overrides) -> Meta:
    return Meta(Meta.clean_configuration({"access_token": TOKEN, "ad_account_id": "act_1234", **overrides}))


def adds(*values, identity_type="email", action=Action.ADD):
    return [MemberChange(identity_type, v, action) for v in values]


def test_registered_as_a_bulk_list_partner_that_creates_its_audience():
    assert get_partner_class("meta") is Meta
    assert Meta.capabilities == {
        Capability.LIST,
        Capability.BULK,
        Capability.CREATES_AUDIENCE,
        Capability.REPORTS_COUNT,
    }
    criteria = Meta.default_upload_criteria
    assert criteria.describe() == {"wait_seconds": 3 * 3600, "messages": 750_000}
    assert Meta.batch_limit == ROWS_PER_REQUEST == 10_000


def test_configuration_is_checked_field_by_field():
    configuration = Meta.clean_configuration({"access_token": TOKEN, "ad_account_id": "act_1234"})
    assert configuration["ad_account_id"] == "1234"
    assert configuration["customer_file_source"] == "USER_PROVIDED_ONLY"
    assert configuration["delete_audience_on_end"] is True
    with pytest.raises(ValidationError) as error:
        Meta.clean_configuration(
            {
                "access_token": TOKEN,
                "ad_account_id": "acct-12",
                "customer_file_source": "X",
                "default_phone_country_code": "0",
            }
        )
    assert set(error.value.message_dict) == {"ad_account_id", "customer_file_source", "default_phone_country_code"}
    with pytest.raises(ValidationError) as error:
        Meta.clean_connection_settings({"audience_id": "../1"})
    assert "audience_id" in error.value.message_dict


def test_hashing_vectors_after_meta_normalisation():
    assert hashed_row("email", "  Test@Example.COM ") == TEST_EMAIL_SHA256
    assert hashed_row("mobile_number", "+1 (650) 555-1234") == US_PHONE_SHA256
    assert hashed_row("phone_number_2", "0033 6 12 34 56 78") == FR_PHONE_SHA256
    assert hashed_row("mobile_number", "06 12 34 56 78", "33") == FR_PHONE_SHA256
    assert hashed_row("mobile_number", "06 12 34 56 78") is None  # national, no country code to give it
    assert normalise_phone("16505551234") == "16505551234"  # without + or 0: taken as international
    # Mobile advertiser ids go in lower case, unhashed.
    assert hashed_row("google_advertising_id", GAID.upper()) == GAID
    assert hashed_row("email", "not an address") is None


def test_create_audience_names_it_and_keeps_the_id(server):
    settings = partner(customer_file_source="PARTNER_PROVIDED_ONLY").create_audience({"audience_id": ""}, AUDIENCE)
    assert settings["created_on_connect"] is True
    created = server.audiences()[settings["audience_id"]]
    assert created["name"] == "Parisians" and created["customer_file_source"] == "PARTNER_PROVIDED_ONLY"
    assert created["account_id"] == "1234"
    # An existing audience named by the connection is used, not created again.
    assert partner().create_audience({"audience_id": settings["audience_id"]}, AUDIENCE) == {}
    assert len(server.audiences()) == 1
    with pytest.raises(PermanentError, match="no Custom Audience 999"):
        partner().test_connection({"audience_id": "999"}, AUDIENCE)


def test_adds_and_removes_go_as_hashed_rows_of_one_schema_per_request(server):
    audience_id = server.create_audience("Parisians")
    meta = partner()
    changes = [
        *adds("test@example.com", "b@example.com"),
        *adds("+16505551234", identity_type="mobile_number"),
        *adds(GAID, identity_type="google_advertising_id"),
    ]
    results = meta.apply_batch({"audience_id": audience_id}, AUDIENCE, changes)
    assert {r.outcome for r in results} == {Outcome.DELIVERED} and len(results) == 4
    assert TEST_EMAIL_SHA256 in server.members(audience_id, EMAIL_SHA256)
    assert server.members(audience_id, PHONE_SHA256) == {US_PHONE_SHA256}
    assert server.members(audience_id, MOBILE_ADVERTISER_ID) == {GAID}
    assert sorted(u["schema"] for u in server.uploads) == [EMAIL_SHA256, MOBILE_ADVERTISER_ID, PHONE_SHA256]
    meta.apply_batch({"audience_id": audience_id}, AUDIENCE, adds("test@example.com", action=Action.REMOVE))
    assert server.uploads[-1]["method"] == "DELETE"
    assert TEST_EMAIL_SHA256 not in server.members(audience_id, EMAIL_SHA256)
    assert meta.audience_count({"audience_id": audience_id}, AUDIENCE) == 3


def sessions_sent(server):
    return [u["session"] for u in server.uploads]


def test_a_call_splits_into_requests_of_10000_rows_in_one_session_closed_by_its_last(server):
    audience_id = server.create_audience("Parisians")
    emails = [f"user{i}@example.com" for i in range(25_000)]
    results = partner().apply_batch({"audience_id": audience_id}, AUDIENCE, adds(*emails))
    assert len(results) == 25_000 and all(r.outcome is Outcome.DELIVERED for r in results)
    assert [u["rows"] for u in server.uploads] == [10_000, 10_000, 5_000]
    sessions = sessions_sent(server)
    assert len({s["session_id"] for s in sessions}) == 1
    assert [s["batch_seq"] for s in sessions] == [1, 2, 3]
    assert [s["last_batch_flag"] for s in sessions] == [False, False, True]
    assert {s["estimated_num_total"] for s in sessions} == {25_000}
    assert len(server.members(audience_id)) == 25_000 and server.open_sessions() == []


def test_rows_meta_cannot_match_are_left_out_of_the_session_which_still_closes(server):
    """The call's last rows normalise to nothing: the session is sized and closed by what is sent."""
    audience_id = server.create_audience("Parisians")
    meta = partner()
    changes = [
        *adds("a@example.com", "b@example.com"),
        *adds("+16505551234", identity_type="mobile_number"),
        *adds("0612345678", "not a number", identity_type="mobile_number"),  # no country code, no digits
        *adds("no address at all"),
    ]
    results = meta.apply_batch({"audience_id": audience_id}, AUDIENCE, changes)
    assert sum(r.outcome is Outcome.REJECTED for r in results) == 3
    sessions = sessions_sent(server)
    assert len({s["session_id"] for s in sessions}) == 1  # the emails and the phone: one session, two requests
    assert [(s["batch_seq"], s["last_batch_flag"]) for s in sessions] == [(1, False), (2, True)]
    assert {s["estimated_num_total"] for s in sessions} == {3} == {sum(u["rows"] for u in server.uploads)}
    assert server.open_sessions() == []


def test_each_action_of_a_call_is_its_own_session_and_a_call_with_nothing_to_send_opens_none(server):
    audience_id = server.create_audience("Parisians")
    meta = partner()
    changes = [*adds("a@example.com"), *adds("b@example.com", action=Action.REMOVE), *adds("c@example.com")]
    meta.apply_batch({"audience_id": audience_id}, AUDIENCE, changes)
    meta.apply_batch({"audience_id": audience_id}, AUDIENCE, adds("d@example.com"))
    meta.apply_batch({"audience_id": audience_id}, AUDIENCE, adds("not an address"))  # nothing to send
    first, removal, second = ((u["method"], u["rows"], u["session"]) for u in server.uploads)
    assert first[:2] == ("POST", 2) and removal[:2] == ("DELETE", 1) and second[:2] == ("POST", 1)
    assert len({first[2]["session_id"], removal[2]["session_id"], second[2]["session_id"]}) == 3
    assert all(s["batch_seq"] == 1 and s["last_batch_flag"] for _, _, s in (first, removal, second))
    assert (first[2]["estimated_num_total"], removal[2]["estimated_num_total"]) == (2, 1)
    assert len(server.sessions()) == 3 and server.open_sessions() == []


def test_values_meta_cannot_match_are_rejected_alone(server):
    audience_id = server.create_audience("Parisians")
    changes = [*adds("a@example.com"), *adds("0612345678", identity_type="mobile_number")]
    results = {r.change.value: r for r in partner().apply_batch({"audience_id": audience_id}, AUDIENCE, changes)}
    assert results["a@example.com"].outcome is Outcome.DELIVERED
    assert results["0612345678"].outcome is Outcome.REJECTED and "mobile_number" in results["0612345678"].reason


def test_rows_meta_reports_invalid_are_rejected_with_its_reason(server, monkeypatch):
    audience_id = server.create_audience("Parisians")
    monkeypatch.setattr("outputs.partners.meta.HASH_ADVERTISING_IDS", False)
    changes = adds("not-a-uuid", GAID, identity_type="google_advertising_id")
    results = {r.change.value: r for r in partner().apply_batch({"audience_id": audience_id}, AUDIENCE, changes)}
    assert results[GAID].outcome is Outcome.DELIVERED
    assert results["not-a-uuid"].outcome is Outcome.REJECTED and "Invalid format" in results["not-a-uuid"].reason


@pytest.mark.parametrize("code", [4, 17, 32, 613, 80003])
def test_throttling_inside_a_400_is_transient_with_meta_s_wait(server, code):
    audience_id = server.create_audience("Parisians")
    server.throttle_next(code=code, minutes=2 if code == 80003 else 0)
    with pytest.raises(TransientError) as error:
        partner().apply_batch({"audience_id": audience_id}, AUDIENCE, adds("a@example.com"))
    assert error.value.status == 400 and error.value.code.startswith(str(code))
    assert error.value.retry_after == (120 if code == 80003 else THROTTLE_DEFAULT_WAIT_SECONDS)
    assert server.members(audience_id) == set()


def test_an_expired_token_is_an_auth_error_code_190(server):
    audience_id = server.create_audience("Parisians")
    server.revoke_token(TOKEN)
    with pytest.raises(AuthError) as error:
        partner().apply_batch({"audience_id": audience_id}, AUDIENCE, adds("a@example.com"))
    assert error.value.code == "190/463" and "expired" in error.value.message


def test_other_graph_errors_are_permanent_and_5xx_transient(server):
    audience_id = server.create_audience("Parisians")
    server.fail_next(graph_error("(#100) Invalid parameter", 100))
    with pytest.raises(PermanentError):
        partner().apply_batch({"audience_id": audience_id}, AUDIENCE, adds("a@example.com"))
    server.fail_next(graph_error("Service temporarily unavailable", 2, status=503))
    with pytest.raises(TransientError):
        partner().apply_batch({"audience_id": audience_id}, AUDIENCE, adds("a@example.com"))
    with pytest.raises(PermanentError, match="does not exist"):
        partner().apply_batch({"audience_id": "42"}, AUDIENCE, adds("a@example.com"))


def test_a_throttle_after_the_first_request_retries_only_the_rest(server):
    audience_id = server.create_audience("Parisians")
    meta = partner()
    changes = [*adds("a@example.com"), *adds(GAID, identity_type="google_advertising_id")]
    original = server._route
    calls = []

    def throttle_second(method, parts, params):
        calls.append(parts)
        if len(calls) == 2:
            return graph_error("(#17) User request limit reached", 17)
        return original(method, parts, params)

    server._route = throttle_second
    results = {r.change.value: r.outcome for r in meta.apply_batch({"audience_id": audience_id}, AUDIENCE, changes)}
    assert results == {"a@example.com": Outcome.DELIVERED, GAID: Outcome.RETRY}


def test_release_deletes_only_an_audience_the_connection_created_when_the_output_says_so(server):
    audience_id = server.create_audience("Parisians")
    assert partner().release_audience({"audience_id": audience_id, "created_on_connect": False}, AUDIENCE) is False
    keep = partner(delete_audience_on_end=False)
    assert keep.release_audience({"audience_id": audience_id, "created_on_connect": True}, AUDIENCE) is False
    assert audience_id in server.audiences()
    assert partner().release_audience({"audience_id": audience_id, "created_on_connect": True}, AUDIENCE) is True
    assert server.audiences() == {}
    # Deleted already (by hand at Meta): what we wanted.
    assert partner().release_audience({"audience_id": audience_id, "created_on_connect": True}, AUDIENCE) is True


def test_test_connection_reads_the_ad_account_or_the_audience(server):
    assert "Local ad account 1234" in partner().test_connection({"audience_id": ""}, None)
    audience_id = server.create_audience("Parisians")
    assert "Parisians" in partner().test_connection({"audience_id": audience_id}, AUDIENCE)
    with pytest.raises(AuthError):
        partner(access_token="wrong").test_connection({"audience_id": ""}, None)


def test_describe_batch_shows_the_first_request_without_sending(server):
    described = partner().describe_batch({"audience_id": "5"}, AUDIENCE, adds("test@example.com"))
    assert described["body"]["payload"] == {"schema": EMAIL_SHA256, "data": [TEST_EMAIL_SHA256]}
    assert described["path"] == "/5/users" and server.uploads == []
