"""The Mailchimp client against the v3 contract (reference/PARTNERS.md), with `responses` matchers."""

import base64
import hashlib

import pytest
import requests
import responses
from django.core.exceptions import ValidationError
from responses import matchers

from outputs.partners.base import Action, AudienceRef, Capability, MemberChange, Outcome
from outputs.partners.http import AuthError, PermanentError, TransientError
from outputs.partners.mailchimp import Mailchimp, data_center, merge_fields, subscriber_hash

KEY = "0123456789abcdef0123456789abcdef-us6"
AUDIENCE = AudienceRef(id=1, name="Potential Parisians", external_name="Potential Parisians")
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/abc123"
BASIC = "Basic " + base64.b64encode(f"audience-forwarding:{KEY}".encode()).decode()


def partner(**overrides):
    configuration = Mailchimp.clean_configuration({"api_key": KEY, **overrides})
    return Mailchimp(configuration)


def add(email, **attributes):
    return MemberChange("email", email, Action.ADD, attributes)


def remove(email):
    return MemberChange("email", email, Action.REMOVE)


def test_subscriber_hash_is_md5_of_trimmed_lower_case_email():
    assert subscriber_hash(" Urist.McVankab@Freddie.com ") == hashlib.md5(b"urist.mcvankab@freddie.com").hexdigest()


def test_data_center_comes_from_the_key_and_a_key_without_one_is_refused():
    assert data_center(KEY) == "us6"
    with pytest.raises(ValidationError) as excinfo:
        Mailchimp.clean_configuration({"api_key": "0123456789abcdef"})
    assert "api_key" in excinfo.value.message_dict


def test_configuration_defaults_follow_mparticle():
    configuration = Mailchimp.clean_configuration({"api_key": KEY})
    assert configuration["email_type"] == "html"
    assert configuration["double_opt_in"] is True
    assert configuration["delete_on_subscription_end"] is True


def test_unknown_settings_are_refused_by_name():
    with pytest.raises(ValidationError) as excinfo:
        Mailchimp.clean_configuration({"api_key": KEY, "colour": "blue"})
    assert "colour" in excinfo.value.message_dict


@responses.activate
def test_batch_uses_basic_auth_and_double_opt_in_gives_pending():
    responses.post(
        LIST_URL,
        match=[
            matchers.header_matcher({"Authorization": BASIC}),
            matchers.json_params_matcher(
                {
                    "members": [
                        {
                            "email_address": "a@x.com",
                            "email_type": "html",
                            "status_if_new": "pending",
                            "status": "pending",
                            "merge_fields": {"FNAME": "Ann", "CITY": "Paris", "AGE": 31},
                        },
                        {"email_address": "b@x.com", "email_type": "html", "status": "unsubscribed"},
                    ],
                    "update_existing": True,
                }
            ),
        ],
        json={"new_members": [], "updated_members": [], "errors": [], "error_count": 0},
    )
    results = partner().apply_batch(
        {"list_id": "abc123"},
        AUDIENCE,
        [add("a@x.com", **{"$FirstName": "Ann", "city": "Paris", "age": 31, "tags": ["x"]}), remove("b@x.com")],
    )
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DELIVERED]


@responses.activate
def test_without_double_opt_in_members_are_subscribed_as_text():
    responses.post(
        LIST_URL,
        match=[
            matchers.json_params_matcher(
                {
                    "members": [
                        {
                            "email_address": "a@x.com",
                            "email_type": "text",
                            "status_if_new": "subscribed",
                            "status": "subscribed",
                        }
                    ],
                    "update_existing": True,
                }
            )
        ],
        json={"errors": []},
    )
    p = partner(double_opt_in=False, email_type="text", send_merge_fields=False)
    assert (
        p.apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com", city="Paris")])[0].outcome is Outcome.DELIVERED
    )


def test_more_than_500_members_is_refused_before_any_call():
    with pytest.raises(ValueError):
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add(f"u{i}@x.com") for i in range(501)])


@responses.activate
def test_per_member_errors_are_classified_and_never_fail_the_batch():
    responses.post(
        LIST_URL,
        json={
            "new_members": [{"email_address": "ok@x.com"}],
            "errors": [
                {
                    "email_address": "fake@x.com",
                    "error": "fake@x.com looks fake or invalid, please enter a real email address.",
                    "error_code": "ERROR_GENERIC",
                },
                {
                    "email_address": "dup@x.com",
                    "error": "dup@x.com is already a list member.",
                    "error_code": "ERROR_CONTACT_EXISTS",
                },
                {
                    "email_address": "busy@x.com",
                    "error": (
                        "busy@x.com has signed up to a lot of lists very recently; "
                        "we're not allowing more signups for now"
                    ),
                    "error_code": "ERROR_GENERIC",
                },
                {
                    "email_address": "gone@x.com",
                    "error": "gone@x.com was permanently deleted and cannot be re-imported.",
                    "error_code": "ERROR_GENERIC",
                },
                {
                    "email_address": "merge@x.com",
                    "error": "Invalid merge field",
                    "error_code": "ERROR_GENERIC",
                    "field": "AGE",
                    "field_message": "Please enter a number",
                },
            ],
            "error_count": 5,
        },
    )
    changes = [
        add("ok@x.com"),
        add("fake@x.com"),
        add("dup@x.com"),
        add("busy@x.com"),
        remove("gone@x.com"),
        add("merge@x.com"),
    ]
    results = {r.change.value: r for r in partner().apply_batch({"list_id": "abc123"}, AUDIENCE, changes)}
    assert results["ok@x.com"].outcome is Outcome.DELIVERED
    assert results["fake@x.com"].outcome is Outcome.REJECTED
    assert "looks fake or invalid" in results["fake@x.com"].reason
    assert results["dup@x.com"].outcome is Outcome.DELIVERED
    assert results["busy@x.com"].outcome is Outcome.RETRY
    assert results["gone@x.com"].outcome is Outcome.DELIVERED  # a removal of a deleted contact is done
    assert results["merge@x.com"].outcome is Outcome.REJECTED
    assert "AGE" in results["merge@x.com"].reason


@responses.activate
def test_401_is_an_auth_error_with_mailchimps_words():
    responses.post(
        LIST_URL,
        status=401,
        content_type="application/problem+json",
        json={
            "type": "x",
            "title": "API Key Invalid",
            "status": 401,
            "detail": "Your API key may be invalid.",
            "instance": "i",
        },
    )
    with pytest.raises(AuthError) as excinfo:
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])
    assert "API Key Invalid: Your API key may be invalid." in excinfo.value.message


@responses.activate
@pytest.mark.parametrize(("status", "headers"), [(429, {"Retry-After": "7"}), (500, {}), (503, {}), (408, {})])
def test_throttling_and_server_errors_are_transient(status, headers):
    responses.post(LIST_URL, status=status, headers=headers, json={"title": "Too Many Requests", "status": status})
    with pytest.raises(TransientError) as excinfo:
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])
    assert excinfo.value.retry_after == (7.0 if headers else None)


@responses.activate
def test_403_without_body_is_throttling_but_with_body_is_auth():
    responses.post(LIST_URL, status=403, body=b"")
    with pytest.raises(TransientError):
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])
    responses.replace(responses.POST, LIST_URL, status=403, json={"title": "Forbidden", "detail": "No access"})
    with pytest.raises(AuthError):
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])


@responses.activate
def test_connection_errors_are_transient_and_redirects_not_followed():
    responses.post(LIST_URL, body=requests.ConnectionError("refused"))
    with pytest.raises(TransientError):
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])
    responses.replace(responses.POST, LIST_URL, status=302, headers={"Location": "https://elsewhere.example/"})
    with pytest.raises(PermanentError):
        partner().apply_batch({"list_id": "abc123"}, AUDIENCE, [add("a@x.com")])


@responses.activate
def test_test_connection_reads_the_list_and_names_a_missing_one():
    responses.get(
        LIST_URL, json={"id": "abc123", "name": "Parisians", "stats": {"member_count": 3, "unsubscribe_count": 1}}
    )
    assert "Parisians" in partner().test_connection({"list_id": "abc123"}, AUDIENCE)
    responses.get(
        "https://us6.api.mailchimp.com/3.0/lists/nope",
        status=404,
        json={"title": "Resource Not Found", "detail": "The requested resource could not be found."},
    )
    with pytest.raises(PermanentError) as excinfo:
        partner().test_connection({"list_id": "nope"}, AUDIENCE)
    assert "no list with id 'nope'" in excinfo.value.message


@responses.activate
def test_end_connection_archives_each_member_and_tolerates_404(settings):
    gone = f"{LIST_URL}/members/{subscriber_hash('gone@x.com')}"
    here = f"{LIST_URL}/members/{subscriber_hash('here@x.com')}"
    responses.delete(here, status=204)
    responses.delete(gone, status=404, json={"title": "Resource Not Found"})
    results = partner().end_connection({"list_id": "abc123"}, AUDIENCE, [remove("here@x.com"), remove("gone@x.com")])
    assert [r.outcome for r in results] == [Outcome.DELIVERED, Outcome.DELIVERED]
    assert len(responses.calls) == 2


def test_end_connection_leaves_the_list_alone_when_the_setting_is_off():
    with responses.RequestsMock() as mock:  # any call would fail: none is registered
        results = partner(delete_on_subscription_end=False).end_connection(
            {"list_id": "abc123"}, AUDIENCE, [remove("a@x.com")]
        )
        assert len(mock.calls) == 0
    assert results[0].outcome is Outcome.DELIVERED


def test_base_url_override_keeps_the_data_center(settings):
    settings.PARTNER_API_BASE_URLS = {"mailchimp": "http://127.0.0.1:9/{dc}/3.0"}
    assert partner().client().base_url == "http://127.0.0.1:9/us6/3.0"


def test_merge_fields_skip_nested_and_reserved_values():
    assert merge_fields({"$FirstName": "A", "$Age": 3, "nested": {"a": 1}, "very_long_attribute": "v", "n": None}) == {
        "FNAME": "A",
        "VERY_LONG_": "v",
    }


@responses.activate
def test_an_answer_that_is_not_json_is_a_permanent_error_not_a_crash():
    responses.get(LIST_URL, body="<html>not mailchimp</html>", content_type="text/html")
    with pytest.raises(PermanentError) as excinfo:
        partner().test_connection({"list_id": "abc123"}, AUDIENCE)
    assert "not a JSON object" in excinfo.value.message


def test_a_malformed_base_url_is_a_permanent_error(settings):
    settings.PARTNER_API_BASE_URLS = {"mailchimp": "not a url"}
    with pytest.raises(PermanentError):
        partner().test_connection({"list_id": "abc123"}, AUDIENCE)


def test_mailchimp_declares_a_realtime_list_that_can_be_read_back_and_counted():
    assert Mailchimp.pattern() is Capability.LIST and Mailchimp.rhythm() is Capability.REALTIME
    assert Mailchimp.has(Capability.LISTS_MEMBERS) and Mailchimp.has(Capability.REPORTS_COUNT)
    assert not Mailchimp.has(Capability.CREATES_AUDIENCE) and Mailchimp.default_upload_criteria is None


@responses.activate
def test_list_members_pages_through_the_list_and_reads_each_entry_as_an_add_or_a_remove():
    page = {"count": "2", "fields": "members.email_address,members.status,total_items"}
    responses.get(
        f"{LIST_URL}/members",
        match=[
            matchers.query_param_matcher({**page, "offset": "0"}),
            matchers.header_matcher({"Authorization": BASIC}),
        ],
        json={
            "members": [
                {"email_address": "Ann@X.com", "status": "subscribed"},
                {"email_address": "bob@x.com", "status": "pending"},
            ],
            "total_items": 4,
        },
    )
    responses.get(
        f"{LIST_URL}/members",
        match=[matchers.query_param_matcher({**page, "offset": "2"})],
        json={
            "members": [
                {"email_address": "cy@x.com", "status": "unsubscribed"},
                {"email_address": "dee@x.com", "status": "cleaned"},
            ],
            "total_items": 4,
        },
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("outputs.partners.mailchimp.MEMBERS_PAGE_SIZE", 2)
        members = list(partner().list_members({"list_id": "abc123"}, AUDIENCE))

    assert members == [
        MemberChange("email", "ann@x.com", Action.ADD),
        MemberChange("email", "bob@x.com", Action.ADD),
        MemberChange("email", "cy@x.com", Action.REMOVE),
        MemberChange("email", "dee@x.com", Action.REMOVE),  # cleaned (bounced): not held, still one entry read
    ]
    assert len(responses.calls) == 2


@responses.activate
def test_listed_members_total_is_the_listing_s_own_total_items():
    responses.get(
        f"{LIST_URL}/members",
        match=[matchers.query_param_matcher({"count": "1", "fields": "total_items"})],
        json={"total_items": 1234},
    )
    assert partner().listed_members_total({"list_id": "abc123"}, AUDIENCE) == 1234


@responses.activate
def test_forget_members_deletes_each_member_for_good_and_a_404_means_already_gone():
    def forget_url(email):
        return f"{LIST_URL}/members/{subscriber_hash(email)}/actions/delete-permanent"

    auth = [matchers.header_matcher({"Authorization": BASIC})]
    responses.post(forget_url("ann@x.com"), status=204, match=auth)
    responses.post(forget_url("bob@x.com"), status=404, json={"title": "Resource Not Found", "status": 404})
    responses.post(forget_url("cy@x.com"), status=400, json={"title": "Invalid Resource", "detail": "Nope."})

    results = partner().forget_members(
        {"list_id": "abc123"}, AUDIENCE, [remove("ann@x.com"), remove("bob@x.com"), remove("cy@x.com")]
    )

    assert Mailchimp.has(Capability.FORGETS_MEMBERS)
    assert [(r.change.value, r.outcome) for r in results] == [
        ("ann@x.com", Outcome.DELIVERED),
        ("bob@x.com", Outcome.DELIVERED),
        ("cy@x.com", Outcome.REJECTED),
    ]
    assert "Nope." in results[2].reason


@responses.activate
def test_forget_members_fails_as_a_whole_when_mailchimp_throttles_or_refuses_the_key():
    responses.post(
        f"{LIST_URL}/members/{subscriber_hash('ann@x.com')}/actions/delete-permanent",
        status=429,
        json={"title": "Too Many Requests", "status": 429},
    )
    with pytest.raises(TransientError):
        partner().forget_members({"list_id": "abc123"}, AUDIENCE, [remove("ann@x.com")])
    responses.replace(
        responses.POST,
        f"{LIST_URL}/members/{subscriber_hash('ann@x.com')}/actions/delete-permanent",
        status=401,
        json={"title": "API Key Invalid", "status": 401},
    )
    with pytest.raises(AuthError):
        partner().forget_members({"list_id": "abc123"}, AUDIENCE, [remove("ann@x.com")])


@responses.activate
def test_audience_count_is_mailchimps_subscribed_count():
    responses.get(LIST_URL, json={"id": "abc123", "name": "Parisians", "stats": {"member_count": 42}})
    assert partner().audience_count({"list_id": "abc123"}, AUDIENCE) == 42
    responses.get(LIST_URL, json={"id": "abc123", "stats": {}})
    assert partner().audience_count({"list_id": "abc123"}, AUDIENCE) is None
