"""Identity resolution: the documented priority, new identities, conflicts recorded and not merged."""

from __future__ import annotations

import pytest
from django.utils import timezone

from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.events_api.resolution import PRIORITY, Known, Resolver
from audiences.inputs import input_create
from audiences.models import Identity, IdentityConflict, Profile

GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


def parsed(**fields):
    return parse_batch({"environment": "production", **fields})


def test_priority_is_mpid_customer_email_other_ids_then_devices():
    assert PRIORITY[:4] == ("mpid", "customer", "email", "other")
    assert PRIORITY.index("other10") < PRIORITY.index("mobile_number") < PRIORITY.index("yahoo")
    assert PRIORITY.index("yahoo") < PRIORITY.index("ios_advertising_id")
    assert PRIORITY.index("yahoo") < PRIORITY.index("google_advertising_id")


def test_resolver_chooses_the_highest_priority_known_identity():
    known = Known(by_mpid={5: 10}, by_identity={("email", "a@b.co"): 20, ("google_advertising_id", GAID): 30})
    resolver = Resolver(known)
    by_device_and_email = resolver.resolve(
        parsed(device_info={"android_advertising_id": GAID}, user_identities={"email": "a@b.co"})
    )
    assert by_device_and_email.target.profile_id == 20
    assert by_device_and_email.conflict.not_attached == [f"google_advertising_id:{GAID}"]
    by_mpid = resolver.resolve(parsed(mpid=5, user_identities={"email": "a@b.co"}))
    assert by_mpid.target.profile_id == 10
    assert by_mpid.conflict.not_attached == ["email:a@b.co"]
    assert by_mpid.conflict.rule.startswith("the profile of the highest-priority known identity (mpid:5)")


def test_resolver_adds_new_identities_and_later_batches_see_them():
    resolver = Resolver(Known(by_mpid={}, by_identity={}))
    first = resolver.resolve(parsed(mpid=9, user_identities={"email": "a@b.co"}))
    assert first.target.new and first.target.mpid == 9
    assert first.new_identities == [("email", "a@b.co")]
    second = resolver.resolve(parsed(user_identities={"email": "a@b.co", "customer_id": "c"}))
    assert second.target is first.target
    assert second.new_identities == [("customer", "c")]
    assert second.conflict is None


def test_unknown_mpid_with_a_known_identity_goes_to_that_profile():
    resolver = Resolver(Known(by_mpid={}, by_identity={("email", "a@b.co"): 20}))
    resolution = resolver.resolve(parsed(mpid=123, user_identities={"email": "a@b.co"}))
    assert resolution.target.profile_id == 20
    assert resolution.conflict is None


@pytest.mark.django_db
def test_conflict_across_three_profiles_is_recorded_once_with_all_of_them():
    input_, _ = input_create("src")
    for fields in (
        {"user_identities": {"email": "a@b.co"}},
        {"user_identities": {"other": "o"}},
        {"device_info": {"android_advertising_id": GAID}},
    ):
        ingest_batches(input_, [parsed(**fields)])
    ids = {t: Identity.objects.get(type=t).profile_id for t in ("email", "other", "google_advertising_id")}
    ingest_batches(
        input_,
        [
            parsed(
                source_request_id="r1",
                device_info={"android_advertising_id": GAID},
                user_identities={"other": "o", "email": "a@b.co"},
            )
        ],
        now=timezone.now(),
    )
    conflict = IdentityConflict.objects.get()
    assert conflict.chosen_profile_id == ids["email"]
    assert conflict.profile_ids == sorted(ids.values())
    assert sorted(conflict.not_attached) == sorted(["other:o", f"google_advertising_id:{GAID}"])
    assert conflict.source_request_id == "r1"
    # Nothing moved, nothing merged.
    assert {t: Identity.objects.get(type=t).profile_id for t in ids} == ids
    assert Profile.objects.count() == 3
