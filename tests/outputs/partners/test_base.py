"""outputs/partners/base.py: what a partner declares as data, checked when its class is defined, and the
per-profile grouping the attribute pattern uses."""

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

import pytest

from outputs.partners.base import (
    Action,
    AudienceRef,
    Capability,
    MemberChange,
    MemberResult,
    Partner,
    ProfileUpdate,
    UploadCriteria,
    group_by_profile,
)


def define(capabilities, *, criteria=None, **methods):
    """Define a partner class, as a partner module does."""
    attrs = {"key": "x", "name": "X", "capabilities": frozenset(capabilities), "default_upload_criteria": criteria}
    return type("X", (Partner,), {**attrs, **methods})


def apply_batch(
    self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
) -> list[MemberResult]:
    return []


def test_a_complete_declaration_is_read_back_through_the_capabilities():
    partner = define(
        {Capability.LIST, Capability.BULK},
        criteria=UploadCriteria(wait=timedelta(hours=3), messages=750_000),
        apply_batch=apply_batch,
    )
    assert partner.pattern() is Capability.LIST and partner.rhythm() is Capability.BULK
    assert partner.has(Capability.BULK) and not partner.has(Capability.REALTIME)
    assert partner.default_upload_criteria.describe() == {"wait_seconds": 10_800, "messages": 750_000}


@pytest.mark.parametrize(
    ("capabilities", "criteria", "methods", "missing"),
    [
        ({Capability.REALTIME}, None, {}, "exactly one of Capability.LIST, Capability.ATTRIBUTE"),
        ({Capability.LIST, Capability.ATTRIBUTE, Capability.REALTIME}, None, {}, "exactly one of Capability.LIST"),
        ({Capability.LIST}, None, {"apply_batch": apply_batch}, "exactly one of Capability.REALTIME"),
        ({Capability.LIST, Capability.BULK}, None, {"apply_batch": apply_batch}, "default_upload_criteria"),
        ({Capability.LIST, Capability.REALTIME}, None, {}, "apply_batch()"),
        ({Capability.ATTRIBUTE, Capability.REALTIME}, None, {}, "apply_profile_updates()"),
        (
            {Capability.LIST, Capability.REALTIME, Capability.LISTS_MEMBERS},
            None,
            {"apply_batch": apply_batch},
            "list_members()",
        ),
        (
            {Capability.LIST, Capability.REALTIME, Capability.CREATES_AUDIENCE},
            None,
            {"apply_batch": apply_batch},
            "create_audience()",
        ),
        (
            {Capability.LIST, Capability.REALTIME, Capability.REPORTS_COUNT},
            None,
            {"apply_batch": apply_batch},
            "audience_count()",
        ),
        (
            {Capability.LIST, Capability.REALTIME, Capability.FORGETS_MEMBERS},
            None,
            {"apply_batch": apply_batch},
            "forget_members()",
        ),
    ],
)
def test_an_incomplete_declaration_fails_when_the_class_is_defined(capabilities, criteria, methods, missing):
    with pytest.raises(TypeError) as excinfo:
        define(capabilities, criteria=criteria, **methods)
    assert missing in str(excinfo.value)


def test_a_capability_given_as_a_string_is_read_as_the_enum():
    partner = define({"list", "realtime"}, apply_batch=apply_batch)
    assert partner.capabilities == frozenset({Capability.LIST, Capability.REALTIME})


def change(value, action=Action.ADD, profile_id=None, kind="email"):
    return MemberChange(kind, value, action, profile_id=profile_id)


def test_group_by_profile_gives_one_update_per_user_in_first_seen_order():
    changes = [
        change("ann@x.com", profile_id=1),
        change("bob@x.com", Action.REMOVE, profile_id=2),
        change("c-ann", profile_id=1, kind="customer"),
        change("orphan@x.com"),
        change("other@x.com"),
    ]
    updates = group_by_profile(changes)
    assert updates == [
        ProfileUpdate(1, (changes[0], changes[2])),
        ProfileUpdate(2, (changes[1],)),
        ProfileUpdate(None, (changes[3],)),  # without a profile, each change stands alone
        ProfileUpdate(None, (changes[4],)),
    ]
    assert [u.action for u in updates[:2]] == [Action.ADD, Action.REMOVE]


def test_a_user_keeping_one_identity_is_still_in_the_audience():
    update = ProfileUpdate(1, (change("old@x.com", Action.REMOVE, 1), change("c-1", Action.ADD, 1, "customer")))
    assert update.action is Action.ADD
