"""Partners that exist only in the tests: they declare capabilities no real partner of this service has yet
(bulk, attribute) and record every call, so the generic code's decisions can be watched. `registered()` puts
them in the registry for one test, with no migration (Output.partner_key has no choices)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from outputs.partners.base import (
    AudienceRef,
    Capability,
    MemberChange,
    MemberResult,
    Outcome,
    Partner,
    ProfileUpdate,
    UploadCriteria,
)
from outputs.partners.mailchimp import Mailchimp
from outputs.partners.registry import register_partner, unregister_partner


class RecordingPartner(Partner):
    """Accepts everything; `calls` holds (method, audience, what was passed) for every call."""

    capabilities = frozenset({Capability.LIST, Capability.REALTIME})
    key = "test_recording"
    name = "Recording"
    accepted_identity_types = frozenset({"email"})
    calls: ClassVar[list[tuple[str, AudienceRef, list[Any]]]] = []

    def test_connection(self, connection_settings: Mapping[str, Any], audience: AudienceRef | None) -> str:
        return "reachable"

    def apply_batch(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, changes: Sequence[MemberChange]
    ) -> list[MemberResult]:
        self.calls.append(("apply_batch", audience, list(changes)))
        return [MemberResult(change, Outcome.DELIVERED) for change in changes]


class BulkListPartner(RecordingPartner):
    """A hashed-list partner in the way of Meta: uploads on criteria, two identities per request."""

    key = "test_bulk_list"
    name = "Bulk list"
    capabilities = frozenset({Capability.LIST, Capability.BULK})
    default_upload_criteria = UploadCriteria(wait=timedelta(minutes=30), messages=5)
    batch_limit = 2


class AttributePartner(RecordingPartner):
    """A user-attribute partner in the way of Braze: one update per user, whatever its identities."""

    key = "test_attribute"
    name = "Attribute"
    capabilities = frozenset({Capability.ATTRIBUTE, Capability.REALTIME})
    accepted_identity_types = frozenset({"email", "customer"})

    def apply_profile_updates(
        self, connection_settings: Mapping[str, Any], audience: AudienceRef, updates: Sequence[ProfileUpdate]
    ) -> list[MemberResult]:
        self.calls.append(("apply_profile_updates", audience, list(updates)))
        return [MemberResult(change, Outcome.DELIVERED) for update in updates for change in update.changes]


class BulkMailchimp(Mailchimp):
    """Mailchimp's client and wire format on the bulk rhythm: for end-to-end tests of uploads with a real
    worker (tests/fakes/bulk_worker.py registers it there) against the local Mailchimp server, pointed at it
    by PARTNER_API_BASE_URLS under this key."""

    key = "test_bulk_mailchimp"
    name = "Bulk Mailchimp"
    capabilities = frozenset({Capability.LIST, Capability.BULK})
    default_upload_criteria = UploadCriteria(wait=timedelta(minutes=30), messages=5)
    batch_limit = 2


@contextlib.contextmanager
def registered(*partners: type[Partner]) -> Iterator[None]:
    """The partners are in the registry, with empty call records, for the duration."""
    for partner in partners:
        if issubclass(partner, RecordingPartner):
            partner.calls = []
        register_partner(partner)
    try:
        yield
    finally:
        for partner in partners:
            unregister_partner(partner.key)
