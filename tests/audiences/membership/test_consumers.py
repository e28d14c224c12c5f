"""The membership change log and its consumers (audiences.membership.consumers and .ledger): every form
of membership change is published to the registered consumers inside the writer's transaction, and a
change with no consumer registered fails loudly instead of reaching nobody."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection as db

from audiences import profiles
from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import input_create
from audiences.membership import consumers, recompute
from audiences.membership.consumers import MembershipDelta
from audiences.membership.recompute import recompute_audience
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile
from forwarding.models import PendingChange
from forwarding.planner import OutboxPlanner
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}
GAID = "38400000-8cf0-11bd-b23e-10b96e40000d"


class Recorder:
    """A consumer that writes down what it is told; for the table form, it reads the tables while they exist."""

    def __init__(self) -> None:
        self.changed: list[dict[int, tuple[list[int], list[int]]]] = []
        self.tables: list[tuple[int, set[int] | None, set[int] | None]] = []
        self.updated: list[tuple[int, list[int], list[int] | None]] = []

    def members_changed(self, deltas: Mapping[int, MembershipDelta]) -> None:
        self.changed.append({a: (sorted(d.entered), sorted(d.left)) for a, d in deltas.items()})

    def members_changed_in_tables(self, *, audience_id: int, entered_table: str | None, left_table: str | None) -> None:
        self.tables.append((audience_id, self._read(entered_table), self._read(left_table)))

    def members_updated(
        self, *, profile_id: int, audience_ids: Sequence[int], identity_ids: Sequence[int] | None
    ) -> None:
        self.updated.append((profile_id, sorted(audience_ids), None if identity_ids is None else sorted(identity_ids)))

    @staticmethod
    def _read(table: str | None) -> set[int] | None:
        if table is None:
            return None
        with db.cursor() as cursor:
            cursor.execute(f"SELECT profile_id FROM {table}")
            return {row[0] for row in cursor.fetchall()}


@pytest.fixture
def recorder(monkeypatch) -> Recorder:
    """The recorder as the only consumer (forwarding's planner taken out for the test)."""
    recorder = Recorder()
    monkeypatch.setattr(consumers, "_consumers", [recorder])
    return recorder


def upsert(email: str, **attributes):
    return profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes=attributes)


def test_forwarding_registers_its_planner_at_start_up():
    assert [type(c) for c in consumers.membership_consumers()] == [OutboxPlanner]


def test_a_membership_change_reaches_the_outbox_through_the_registry(monkeypatch):
    audience = factories.active_audience()
    connection = factories.connect(audience, factories.mailchimp_output())

    factories.parisian("ann@x.com")
    assert set(PendingChange.objects.filter(connection=connection).values_list("value", "action")) == {
        ("ann@x.com", "add")
    }

    # The same change with the planner out of the registry: nothing reaches the outbox, so the
    # registry is the only way in.
    PendingChange.objects.all().delete()
    recorder = Recorder()
    monkeypatch.setattr(consumers, "_consumers", [recorder])
    bob = factories.parisian("bob@x.com")
    assert recorder.changed == [{audience.pk: ([bob.pk], [])}]
    assert not PendingChange.objects.exists()


def test_entering_and_leaving_are_published_with_the_change_log(recorder):
    audience = factories.active_audience()
    ann = factories.parisian("ann@x.com")
    upsert("ann@x.com", status="Free")

    assert recorder.changed == [{audience.pk: ([ann.pk], [])}, {audience.pk: ([], [ann.pk])}]
    assert list(MembershipChange.objects.filter(profile=ann).values_list("kind", flat=True).order_by("id")) == [
        "entered",
        "left",
    ]


def test_a_staying_member_with_a_new_identity_or_new_attributes_is_published(recorder):
    audience = factories.active_audience()
    ann = factories.parisian("ann@x.com")
    recorder.changed.clear()

    profiles.profile_upsert(
        identities=[{"type": "email", "value": "ann@x.com"}, {"type": "google_advertising_id", "value": GAID}]
    )
    upsert("ann@x.com", nickname="Annie")

    gaid = Identity.objects.get(type="google_advertising_id").pk
    assert recorder.updated == [(ann.pk, [audience.pk], [gaid]), (ann.pk, [audience.pk], None)]
    assert recorder.changed == []  # membership did not change


def test_a_staying_member_given_a_new_identity_by_the_events_api_is_published(recorder):
    """The Events API path too: the new email of a member who stays reaches the partner (its attributes,
    unchanged here, are not sent again)."""
    audience = factories.active_audience()
    ann = profiles.profile_upsert(
        identities=[{"type": "customer", "value": "c1"}], attributes={"status": "Premium", "favourite_city": "Paris"}
    ).profile
    recorder.changed.clear()
    parisian = {"status": "Premium", "favourite_city": "Paris"}

    batches = [
        parse_batch({"environment": "production", "user_identities": {"customer_id": "c1", "email": "ann@x.com"}}),
        # A new profile entering: its identities go with its entry, not as an update.
        parse_batch(
            {"environment": "production", "user_identities": {"email": "carl@x.com"}, "user_attributes": parisian}
        ),
    ]
    ingest_batches(input_create("Web")[0], batches)

    email = Identity.objects.get(value="ann@x.com")
    carl = Identity.objects.get(value="carl@x.com").profile_id
    assert email.profile_id == ann.pk
    assert recorder.updated == [(ann.pk, [audience.pk], [email.pk])]
    assert recorder.changed == [{audience.pk: ([carl], [])}]


def test_a_recompute_publishes_its_difference_as_tables_on_postgresql(recorder):
    if db.vendor != "postgresql":
        service_missing("the set-based recompute needs PostgreSQL")
    audience = Audience.objects.create(name="Premium", criteria=PREMIUM, status=Audience.Status.ACTIVE)
    stays, goes = Profile.objects.create(attributes={"status": "Premium"}), Profile.objects.create(attributes={})
    comes = Profile.objects.create(attributes={"status": "Premium"})
    AudienceMembership.objects.bulk_create(
        [AudienceMembership(audience=audience, profile=p, entered_at=NOW) for p in (stays, goes)]
    )

    result = recompute_audience(audience.pk, now=NOW)

    assert (result.entered, result.left) == (1, 1)
    assert recorder.tables == [(audience.pk, {comes.pk}, {goes.pk})]
    assert recorder.changed == []


def test_a_recompute_by_profile_publishes_deltas(recorder):
    # The fallback path (SQLite's), called directly so that it runs on any database.
    audience = Audience.objects.create(name="Premium", criteria=PREMIUM, status=Audience.Status.ACTIVE)
    comes = Profile.objects.create(attributes={"status": "Premium"})

    recompute._recompute_by_profile(audience, now=NOW, reason="recomputed")

    assert recorder.changed == [{audience.pk: ([comes.pk], [])}]


def test_a_change_with_no_consumer_registered_raises_and_writes_nothing(monkeypatch):
    audience = factories.active_audience()
    monkeypatch.setattr(consumers, "_consumers", [])

    with pytest.raises(ImproperlyConfigured, match="No membership consumer is registered"):
        factories.parisian("ann@x.com")

    assert not AudienceMembership.objects.filter(audience=audience).exists()
    assert not MembershipChange.objects.exists()
    assert not Profile.objects.exists()


def test_registering_twice_keeps_one(monkeypatch):
    monkeypatch.setattr(consumers, "_consumers", [])
    recorder = Recorder()
    consumers.register_membership_consumer(recorder)
    consumers.register_membership_consumer(recorder)
    assert consumers.membership_consumers() == (recorder,)
