"""The Braze client against the /users/track contract (reference/PARTNERS.md), with `responses` matchers."""

import json
import time

import pytest
import responses
from django.core.exceptions import ValidationError
from responses import matchers

from outputs.partners.base import (
    Action,
    AudienceRef,
    Capability,
    MemberChange,
    Outcome,
    ProfileUpdate,
    group_by_profile,
)
from outputs.partners.braze import ATTRIBUTES_PER_REQUEST, Braze, normalise_email
from outputs.partners.http import AuthError, PermanentError, TransientError
from outputs.partners.registry import get_partner_class

KEY = "braze-rest-key"
AUDIENCE = AudienceRef(id=7, name="Potential Parisians", external_name="Parisians")
TRACK = "https://rest.iad-03.braze.com/users/track"
BEARER = matchers.header_matcher({"Authorization": f"Bearer {KEY}"})
SUCCESS = {"message": "success", "attributes_processed": 1}
SAME_EMAIL_TYPE = {"email_identity_type": "other"}


def partner(**overrides):
    return Braze(Braze.clean_configuration({"api_key": KEY, "instance": "US-03", **overrides}))


def change(identity_type, value, action=Action.ADD, profile_id=None):
    return MemberChange(identity_type, value, action, profile_id=profile_id)


def user(profile_id, *changes):
    return ProfileUpdate(profile_id, tuple(changes))


def sent(call_index=0):
    return json.loads(responses.calls[call_index].request.body)["attributes"]


def outcomes(results):
    return {(r.change.identity_type, r.change.value): r.outcome for r in results}


def test_registered_as_an_attribute_realtime_partner():
    assert get_partner_class("braze") is Braze
    assert Braze.capabilities == {Capability.ATTRIBUTE, Capability.REALTIME}


def test_defaults_follow_mparticle():
    configuration = Braze.clean_configuration({"api_key": KEY, "instance": "EU-01"})
    assert configuration["external_identity_type"] == "customer"
    assert configuration["email_identity_type"] == "email"
    assert configuration["send_segments_as"] == "single_attribute"
    assert configuration["segments_attribute"] == "SegmentMembership"
    assert Braze(configuration).base_url() == "https://rest.fra-01.braze.eu"


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"instance": "US-09"}, "instance"),
        ({}, "instance"),
        ({"instance": "custom"}, "custom_endpoint"),
        ({"instance": "custom", "custom_endpoint": "http://evil.example.com/path"}, "custom_endpoint"),
        ({"instance": "custom", "custom_endpoint": "rest host"}, "custom_endpoint"),
        ({"instance": "US-01", "external_identity_type": "email"}, "external_identity_type"),
        ({"instance": "US-01", "email_identity_type": "customer"}, "email_identity_type"),
        ({"instance": "US-01", "send_segments_as": "tags"}, "send_segments_as"),
        ({"instance": "US-01", "segments_attribute": "$segments"}, "segments_attribute"),
        ({"instance": "US-01", "api_key": ""}, "api_key"),
        ({"instance": "US-01", "external_identity_type": "other", **SAME_EMAIL_TYPE}, "email_identity_type"),
    ],
)
def test_invalid_settings_are_refused_naming_the_field(values, field):
    """Each invalid value is refused, the error naming its field."""
    with pytest.raises(ValidationError) as excinfo:
        Braze.clean_configuration({"api_key": KEY, **values})
    assert field in excinfo.value.message_dict


def test_a_custom_instance_is_a_host_and_becomes_an_https_url():
    configuration = Braze.clean_configuration(
        {"api_key": KEY, "instance": "custom", "custom_endpoint": "https://rest.iad-09.braze.com/"}
    )
    assert configuration["custom_endpoint"] == "rest.iad-09.braze.com"
    assert Braze(configuration).base_url() == "https://rest.iad-09.braze.com"


def test_partner_api_base_urls_points_braze_at_a_local_server(settings):
    settings.PARTNER_API_BASE_URLS = {"braze": "http://127.0.0.1:8026"}
    assert partner().base_url() == "http://127.0.0.1:8026"


def test_emails_are_trimmed_and_lower_cased_and_whitespace_inside_is_refused():
    assert normalise_email("  Amelie@Example.COM\n") == "amelie@example.com"
    assert normalise_email("ame lie@example.com") is None
    assert normalise_email("not-an-address") is None


@responses.activate
def test_single_attribute_adds_and_removes_the_audience_id_with_the_array_syntax():
    responses.post(TRACK, json=SUCCESS, match=[BEARER])
    results = partner().apply_profile_updates(
        {},
        AUDIENCE,
        [user(1, change("customer", "c1")), user(2, change("customer", "c2", Action.REMOVE))],
    )
    assert sent() == [
        {"external_id": "c1", "SegmentMembership": {"add": ["7"]}},
        {"external_id": "c2", "SegmentMembership": {"remove": ["7"]}},
    ]
    assert {r.outcome for r in results} == {Outcome.DELIVERED}


@responses.activate
def test_one_attribute_per_segment_and_both():
    responses.post(TRACK, json=SUCCESS)
    updates = [user(1, change("customer", "c1")), user(2, change("customer", "c2", Action.REMOVE))]
    partner(send_segments_as="attribute_per_segment").apply_profile_updates({}, AUDIENCE, updates)
    assert sent(0) == [{"external_id": "c1", "In Parisians": True}, {"external_id": "c2", "In Parisians": False}]
    partner(send_segments_as="both", segments_attribute="Audiences").apply_profile_updates({}, AUDIENCE, updates)
    assert sent(1) == [
        {"external_id": "c1", "Audiences": {"add": ["7"]}, "In Parisians": True},
        {"external_id": "c2", "Audiences": {"remove": ["7"]}, "In Parisians": False},
    ]


@responses.activate
def test_several_identities_of_one_user_go_out_in_one_object_and_share_its_outcome():
    responses.post(TRACK, json=SUCCESS)
    changes = [change("customer", "c1", profile_id=1), change("email", "Amelie@Example.com", profile_id=1)]
    changes.append(change("other", "o-1", profile_id=1))
    results = partner().apply_profile_updates({}, AUDIENCE, group_by_profile(changes))
    assert sent() == [{"external_id": "c1", "SegmentMembership": {"add": ["7"]}, "email": "amelie@example.com"}]
    assert outcomes(results) == {
        ("customer", "c1"): Outcome.DELIVERED,
        ("email", "Amelie@Example.com"): Outcome.DELIVERED,
        ("other", "o-1"): Outcome.DELIVERED,
    }


@responses.activate
def test_a_user_without_an_external_id_is_named_by_its_normalised_email():
    responses.post(TRACK, json=SUCCESS)
    partner().apply_profile_updates({}, AUDIENCE, [user(1, change("email", " Amelie@Example.com "))])
    assert sent() == [{"email": "amelie@example.com", "SegmentMembership": {"add": ["7"]}}]


@responses.activate
def test_the_mpid_setting_names_the_user_by_its_profile_id_and_other_id_types_can_be_chosen():
    responses.post(TRACK, json=SUCCESS)
    one_user = user(42, change("email", "a@example.com", profile_id=42), change("customer", "c1", profile_id=42))
    partner(external_identity_type="mpid").apply_profile_updates({}, AUDIENCE, [one_user])
    assert sent(0) == [{"external_id": "42", "SegmentMembership": {"add": ["7"]}, "email": "a@example.com"}]
    partner(external_identity_type="other3", email_identity_type="other").apply_profile_updates(
        {}, AUDIENCE, [user(1, change("other3", "x-9"), change("other", "B@Example.com"))]
    )
    assert sent(1) == [{"external_id": "x-9", "SegmentMembership": {"add": ["7"]}, "email": "b@example.com"}]


@responses.activate
def test_an_email_braze_would_refuse_is_rejected_alone_and_never_sent():
    responses.post(TRACK, json=SUCCESS)
    updates = [
        user(1, change("email", "bad address@example.com")),
        user(2, change("email", "good@example.com")),
        user(3, change("customer", "c3"), change("email", "also bad@example.com")),
    ]
    results = partner().apply_profile_updates({}, AUDIENCE, updates)
    assert sent() == [
        {"email": "good@example.com", "SegmentMembership": {"add": ["7"]}},
        {"external_id": "c3", "SegmentMembership": {"add": ["7"]}},
    ]
    assert outcomes(results) == {
        ("email", "bad address@example.com"): Outcome.REJECTED,
        ("email", "good@example.com"): Outcome.DELIVERED,
        ("customer", "c3"): Outcome.DELIVERED,
        ("email", "also bad@example.com"): Outcome.REJECTED,
    }


@responses.activate
def test_a_user_with_no_identity_braze_can_name_it_by_is_rejected_with_the_reason():
    responses.post(TRACK, json=SUCCESS)
    results = partner().apply_profile_updates(
        {}, AUDIENCE, [user(1, change("other5", "z")), user(2, change("customer", "c2"))]
    )
    assert len(sent()) == 1
    rejected = [r for r in results if r.outcome is Outcome.REJECTED]
    assert [r.change.value for r in rejected] == ["z"]
    assert "External Identity Type customer" in rejected[0].reason


@responses.activate
def test_at_most_75_objects_per_request():
    responses.post(TRACK, json=SUCCESS)
    updates = [user(i, change("customer", f"c{i}")) for i in range(2 * ATTRIBUTES_PER_REQUEST + 1)]
    results = partner().apply_profile_updates({}, AUDIENCE, updates)
    assert [len(sent(i)) for i in range(len(responses.calls))] == [75, 75, 1]
    assert len(results) == 151 and {r.outcome for r in results} == {Outcome.DELIVERED}


@responses.activate
def test_braze_errors_per_index_reject_those_users_only():
    answer = {"message": "success", "errors": [{"type": "'external_id' is invalid", "index": 1}]}
    responses.post(TRACK, json=answer)
    results = partner().apply_profile_updates(
        {}, AUDIENCE, [user(i, change("customer", f"c{i}"), change("email", f"u{i}@example.com")) for i in range(3)]
    )
    rejected = {r.change.value: r.reason for r in results if r.outcome is Outcome.REJECTED}
    assert rejected == {"c1": "'external_id' is invalid", "u1@example.com": "'external_id' is invalid"}
    assert sum(r.outcome is Outcome.DELIVERED for r in results) == 4


@responses.activate
def test_queued_in_maintenance_is_delivered():
    responses.post(TRACK, json={"message": "queued"}, status=202)
    results = partner().apply_profile_updates({}, AUDIENCE, [user(1, change("customer", "c1"))])
    assert results[0].outcome is Outcome.DELIVERED


@pytest.mark.parametrize(
    ("status", "error"),
    [(400, PermanentError), (401, AuthError), (403, AuthError), (404, PermanentError), (500, TransientError)],
)
@responses.activate
def test_whole_request_failures_raise_the_interfaces_errors(status, error):
    responses.post(TRACK, json={"message": "nope"}, status=status)
    with pytest.raises(error) as excinfo:
        partner().apply_profile_updates({}, AUDIENCE, [user(1, change("customer", "c1"))])
    assert "nope" in excinfo.value.message


@responses.activate
def test_a_429_waits_until_x_ratelimit_reset():
    reset = int(time.time()) + 30
    headers = {"X-RateLimit-Limit": "3000", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    responses.post(TRACK, json={"message": "Rate limit exceeded"}, status=429, headers=headers)
    with pytest.raises(TransientError) as excinfo:
        partner().apply_profile_updates({}, AUDIENCE, [user(1, change("customer", "c1"))])
    assert excinfo.value.status == 429
    assert 25 <= excinfo.value.retry_after <= 31


@responses.activate
def test_a_used_up_window_stops_sending_the_rest_which_is_retried():
    reset = int(time.time()) + 3
    headers = {"X-RateLimit-Limit": "75", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": str(reset)}
    responses.post(TRACK, json=SUCCESS, headers=headers)
    braze = partner()
    updates = [user(i, change("customer", f"c{i}")) for i in range(80)]
    results = braze.apply_profile_updates({}, AUDIENCE, updates)
    assert len(responses.calls) == 1  # the second request was not sent into a used-up window
    assert sum(r.outcome is Outcome.DELIVERED for r in results) == 75
    retried = [r for r in results if r.outcome is Outcome.RETRY]
    assert len(retried) == 5 and "X-RateLimit-Remaining" in retried[0].reason
    # The next batch is not sent either before the reset: the wait goes to delivery's backoff.
    with pytest.raises(TransientError) as excinfo:
        braze.apply_profile_updates({}, AUDIENCE, updates[:1])
    assert 0 < excinfo.value.retry_after <= 4
    assert len(responses.calls) == 1


@responses.activate
def test_end_connection_removes_the_id_and_unsets_the_boolean():
    responses.post(TRACK, json=SUCCESS)
    held = [
        MemberChange("customer", "c1", Action.REMOVE, profile_id=1),
        MemberChange("email", "a@example.com", Action.REMOVE, profile_id=1),
        MemberChange("email", "gone@example.com", Action.REMOVE),
    ]
    braze = partner(send_segments_as="both")
    assert braze.wants_cleanup_on_end()
    results = braze.end_connection({}, AUDIENCE, held)
    assert sent() == [
        {"external_id": "c1", "SegmentMembership": {"remove": ["7"]}, "In Parisians": None},
        {"email": "gone@example.com", "SegmentMembership": {"remove": ["7"]}, "In Parisians": None},
    ]
    assert {r.outcome for r in results} == {Outcome.DELIVERED}


def test_the_preview_shows_the_first_request_without_the_key():
    preview = partner().describe_batch({}, AUDIENCE, [change("customer", "c1", profile_id=1)])
    assert preview == {
        "method": "POST",
        "path": "/users/track",
        "body": {"attributes": [{"external_id": "c1", "SegmentMembership": {"add": ["7"]}}]},
    }
    assert KEY not in json.dumps(preview)


@pytest.mark.parametrize(("status", "passes"), [(201, True), (400, True), (401, False)])
@responses.activate
def test_test_connection_checks_the_key_with_an_empty_track_call(status, passes):
    responses.post(TRACK, json={"message": "success" if status == 201 else "nope"}, status=status, match=[BEARER])
    if passes:
        assert "accepted" in partner().test_connection({}, AUDIENCE)
    else:
        with pytest.raises(AuthError):
            partner().test_connection({}, AUDIENCE)
