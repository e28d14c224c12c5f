"""Mailchimp lists as real accounts are (issue 11 item 7): lists requiring merge fields still take members
(skip_merge_validation), and a merge value that does not fit its field is left out, not the member. Against
the local Mailchimp server, which refuses like the real one when the parameter is absent."""

from __future__ import annotations

import pytest

from local_partners.mailchimp import LocalMailchimpServer, subscriber_hash
from outputs.partners.base import SKIPPED_FIELDS_NOTE, Action, AudienceRef, MemberChange, Outcome
from outputs.partners.mailchimp import Mailchimp

KEY = "0123456789abcdef0123456789abcdef-us6"
AUDIENCE = AudienceRef(id=1, name="Potential Parisians", external_name="Potential Parisians")


@pytest.fixture
def server(settings):
    with LocalMailchimpServer(api_keys=[KEY]) as server:
        server.create_list(
            "strict",
            merge_fields=[
                {"tag": "FNAME", "required": True},
                {"tag": "ADDRESS", "type": "address", "required": True},
                {"tag": "AGE", "type": "number"},
            ],
        )
        settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
        yield server


def partner() -> Mailchimp:
    return Mailchimp(Mailchimp.clean_configuration({"api_key": KEY, "double_opt_in": False}))


def test_members_without_required_merge_fields_join_a_list_that_requires_them(server):
    changes = [MemberChange("email", f"m{i}@example.org", Action.ADD) for i in range(3)]
    results = partner().apply_batch({"list_id": "strict"}, AUDIENCE, changes)

    assert [(r.outcome, r.reason) for r in results] == [(Outcome.DELIVERED, "")] * 3
    assert {m["status"] for m in server.members("strict").values()} == {"subscribed"}
    assert all("skip_merge_validation=true" in r.path for r in server.requests)


def test_a_merge_value_that_does_not_fit_its_field_is_left_out_and_said(server):
    changes = [
        MemberChange("email", "old@example.org", Action.ADD, {"age": "forty", "$FirstName": "Ann"}),
        MemberChange("email", "young@example.org", Action.ADD, {"age": 21}),
        MemberChange("email", "long@example.org", Action.ADD, {"$FirstName": "x" * 300}),
    ]
    results = {r.change.value: r for r in partner().apply_batch({"list_id": "strict"}, AUDIENCE, changes)}

    assert {v: r.outcome for v, r in results.items()} == dict.fromkeys(results, Outcome.DELIVERED)
    assert results["old@example.org"].reason.startswith(f"{SKIPPED_FIELDS_NOTE}AGE (")
    assert results["long@example.org"].reason.startswith(f"{SKIPPED_FIELDS_NOTE}FNAME (")
    assert results["young@example.org"].reason == ""
    members = server.members("strict")
    # Only the offending field is left out: the others still reach the list.
    assert members[subscriber_hash("old@example.org")]["merge_fields"] == {"FNAME": "Ann"}
    assert members[subscriber_hash("young@example.org")]["merge_fields"] == {"AGE": 21}
    assert members[subscriber_hash("long@example.org")]["merge_fields"] == {}
