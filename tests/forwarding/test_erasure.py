"""Data-subject erasure, the outbox side (issue 9 item 6): every connection that holds or may hold the
profile gets a remove carrying the identity value, the profile's data goes at once, and once the removes are
delivered nothing of its values is left; Mailchimp faked with `responses`."""

from __future__ import annotations

import json

import pytest
import responses
from django.apps import apps
from django.db import connection as db
from django.db import connections
from django.utils import timezone

from audiences import erasure
from audiences.models import Identity, IdentityConflict, MembershipChange, Profile, ProfileErasure
from connections.models import ConnectionMember
from forwarding import lifecycle as connection_services
from forwarding.delivery import deliver_connection
from forwarding.erasure import FINISHER_LOCK, erasures_finish
from forwarding.models import DeliveryAttempt, ErasureRemoval, PendingChange
from outputs.partners.mailchimp import subscriber_hash
from tests import factories
from tests.conftest import service_missing
from tests.forwarding.test_forwarding import LIST_URL, OK

pytestmark = pytest.mark.django_db
EMAIL = "forget.me@example.com"
# Mailchimp's permanent delete of that member (POST .../members/{md5 of the address}/actions/delete-permanent).
FORGET_URL = f"{LIST_URL}/members/{subscriber_hash(EMAIL)}/actions/delete-permanent"


def rows_quoting(text: str) -> list[str]:
    """Every row of every table of ours whose text or JSON columns contain `text` (case-insensitive)."""
    found = []
    for model in apps.get_models():
        if model._meta.app_label not in {"audiences", "connections", "forwarding", "outputs"}:
            continue
        columns = [
            f.column
            for f in model._meta.concrete_fields
            if f.get_internal_type() in {"CharField", "TextField", "JSONField", "EmailField"}
        ]
        if not columns:
            continue
        table = db.ops.quote_name(model._meta.db_table)
        where = " OR ".join(f"LOWER(CAST({db.ops.quote_name(c)} AS TEXT)) LIKE %s" for c in columns)
        with db.cursor() as cursor:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", [f"%{text.lower()}%"] * len(columns))
            if cursor.fetchone()[0]:
                found.append(model._meta.db_table)
    return found


@pytest.fixture
def held(rings):
    """A Parisian delivered to Mailchimp (the partner holds it), with an event and its history."""
    audience = factories.active_audience()
    connection = factories.connect(audience, factories.mailchimp_output())
    profile = factories.parisian(EMAIL, gaid="38400000-8cf0-11bd-b23e-10b96e40000d")
    factories.parisian("stays@example.com")
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)
    assert ConnectionMember.objects.get(value=EMAIL).state == "added"
    return profile, connection


def test_erasing_plans_the_partner_removes_then_deletes_the_profile_data(held):
    profile, connection = held
    conflict = IdentityConflict.objects.create(
        at=timezone.now(), identities=[f"email:{EMAIL.upper()}"], profile_ids=[profile.pk], rule="kept"
    )

    found = erasure.profile_find_by_identity(identity_type="email", identity_value=f"  {EMAIL.upper()} ")
    done = erasure.profile_erase(profile_id=found.pk, source="api")

    assert found.pk == profile.pk
    assert (done.status, done.identities, done.audiences_left, done.partner_removes) == ("removing", 2, 1, 1)
    assert done.history == 2 and done.identity_conflicts == 1  # entered, then left by the erasure
    assert not Profile.objects.filter(pk=profile.pk).exists()
    assert not Identity.objects.filter(profile_id=profile.pk).exists()
    assert not MembershipChange.objects.filter(profile_id=profile.pk).exists()
    assert not IdentityConflict.objects.filter(pk=conflict.pk).exists()
    # The remove carries the value (the profile is gone): the outbox and the owed remove are all that quote it.
    remove = PendingChange.objects.get(value=EMAIL)
    assert (remove.action, remove.profile_id) == ("remove", None)
    assert sorted(rows_quoting(EMAIL)) == sorted(
        ["forwarding_pendingchange", "forwarding_erasureremoval", "connections_connectionmember"]
    )

    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)
        (call,) = mock.calls
    assert [(m["email_address"], m["status"]) for m in json.loads(call.request.body)["members"]] == [
        (EMAIL, "unsubscribed")
    ]
    # An unsubscribe keeps the address at Mailchimp: the finisher deletes the member there for good.
    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=204)
        assert erasures_finish() == {"delivered": 1, "refused": 0, "finished": 1}
        assert len(mock.calls) == 1
    assert DeliveryAttempt.objects.filter(kind="erasure", result="ok", sent=1, delivered=1).count() == 1

    done.refresh_from_db()
    assert done.status == "done" and done.finished_at and done.partner_refused == 0
    assert rows_quoting(EMAIL) == [] and rows_quoting("38400000-8cf0-11bd-b23e-10b96e40000d") == []
    # The other member is untouched.
    assert ConnectionMember.objects.get(value="stays@example.com").state == "added"
    assert erasures_finish() == {"delivered": 0, "refused": 0, "finished": 0}


def test_a_paused_connection_keeps_the_erasure_removing_until_resumed(held):
    profile, connection = held
    connection_services.connection_pause(connection=connection)
    done = erasure.profile_erase(profile_id=profile.pk, source="admin")
    assert erasures_finish()["finished"] == 0
    done.refresh_from_db()
    assert done.status == "removing" and ErasureRemoval.objects.count() == 1

    connection_services.connection_resume(connection=connection)
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        mock.post(FORGET_URL, status=204)
        deliver_connection(connection_id=connection.pk)
        erasures_finish()
    done.refresh_from_db()
    assert done.status == "done" and rows_quoting(EMAIL) == []


def test_a_refused_identity_is_forgotten_at_once_and_a_pending_add_becomes_a_remove(rings):
    audience = factories.active_audience()
    connection = factories.connect(audience, factories.mailchimp_output())
    profile = factories.parisian(EMAIL)  # its add is pending, never sent
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value=EMAIL, state="rejected", updated_at=timezone.now()
    )
    PendingChange.objects.filter(value=EMAIL).update(profile=profile)

    done = erasure.profile_erase(profile_id=profile.pk, source="api")

    assert PendingChange.objects.get(value=EMAIL).action == "remove"
    assert done.partner_removes == 1
    # The partner never held it: delivery skips the remove, and the record goes with the owed remove.
    with responses.RequestsMock():
        report = deliver_connection(connection_id=connection.pk)
    assert report.skipped == 1
    with responses.RequestsMock() as mock:
        # Refused members may still be on the list (Mailchimp's compliance state): forgotten too; 404 is "none".
        mock.post(FORGET_URL, status=404, json={"title": "Resource Not Found", "status": 404})
        erasures_finish()
    assert rows_quoting(EMAIL) == []
    done.refresh_from_db()
    assert done.status == "done"


def test_a_profile_no_partner_holds_is_done_at_once(rings):
    profile = factories.profile(email=EMAIL, status="Free")
    done = erasure.profile_erase(profile_id=profile.pk, source="api")
    assert (done.status, done.partner_removes, done.audiences_left) == ("done", 0, 0)
    assert rows_quoting(EMAIL) == []
    assert ProfileErasure.objects.get().pk == done.pk


def test_a_partner_failing_to_forget_keeps_the_remove_owed_until_it_succeeds(held):
    profile, connection = held
    done = erasure.profile_erase(profile_id=profile.pk, source="api")
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)

    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=503, json={"title": "Service Unavailable", "status": 503})
        assert erasures_finish() == {"delivered": 0, "refused": 0, "finished": 0}
    done.refresh_from_db()
    assert done.status == "removing" and ErasureRemoval.objects.count() == 1
    assert ConnectionMember.objects.filter(value=EMAIL).exists()  # still owed: its record is kept too
    failed = DeliveryAttempt.objects.get(kind="erasure")
    assert (failed.result, failed.http_status, failed.sent) == ("transient", 503, 1)

    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=204)
        assert erasures_finish() == {"delivered": 1, "refused": 0, "finished": 1}
    assert rows_quoting(EMAIL) == []


def test_a_member_mailchimp_refuses_to_forget_is_counted_refused(held):
    profile, connection = held
    done = erasure.profile_erase(profile_id=profile.pk, source="api")
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)
        mock.post(FORGET_URL, status=400, json={"title": "Invalid Resource", "status": 400, "detail": "No."})
        assert erasures_finish() == {"delivered": 1, "refused": 1, "finished": 1}
    done.refresh_from_db()
    assert (done.status, done.partner_refused) == ("done", 1)
    assert rows_quoting(EMAIL) == []


def test_a_member_who_left_before_the_erasure_is_forgotten_at_mailchimp_too(rings):
    """Mailchimp kept the earlier leaver as unsubscribed: nothing to send, but the erasure owes its forgetting."""
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    profile = factories.profile(email=EMAIL, status="Free")  # not in the audience any more
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value=EMAIL, state="removed", updated_at=timezone.now()
    )

    done = erasure.profile_erase(profile_id=profile.pk, source="api")

    assert (done.status, done.partner_removes) == ("removing", 1)
    assert not PendingChange.objects.filter(value=EMAIL).exists()
    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=204)
        assert erasures_finish() == {"delivered": 1, "refused": 0, "finished": 1}
    done.refresh_from_db()
    assert done.status == "done" and rows_quoting(EMAIL) == []


@pytest.mark.django_db(transaction=True)
def test_partners_are_asked_to_forget_with_no_transaction_open(held, monkeypatch):
    """A slow partner must not hold the owed rows' locks and a database connection for its whole call."""
    from outputs.partners.mailchimp import Mailchimp

    profile, connection = held
    erasure.profile_erase(profile_id=profile.pk, source="api")
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)
    in_transaction: list[bool] = []
    forget = Mailchimp.forget_members

    def spy(self, *args, **kwargs):
        in_transaction.append(db.in_atomic_block)
        return forget(self, *args, **kwargs)

    monkeypatch.setattr(Mailchimp, "forget_members", spy)
    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=204)
        assert erasures_finish() == {"delivered": 1, "refused": 0, "finished": 1}
    assert in_transaction == [False]


@pytest.mark.django_db(transaction=True)
def test_a_second_finisher_leaves_while_one_runs(held):
    if db.vendor != "postgresql":
        service_missing("the finisher's lock is PostgreSQL's")
    profile, connection = held
    erasure.profile_erase(profile_id=profile.pk, source="api")
    with responses.RequestsMock() as mock:
        mock.post(LIST_URL, json=OK)
        deliver_connection(connection_id=connection.pk)
    other = connections.create_connection("default")  # a finisher running in another process
    try:
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", FINISHER_LOCK)
        with responses.RequestsMock():  # no call expected: an unexpected one would be recorded failing
            assert erasures_finish() == {"delivered": 0, "refused": 0, "finished": 0}
        assert ErasureRemoval.objects.count() == 1 and not DeliveryAttempt.objects.filter(kind="erasure").exists()
    finally:
        # Let go as a finisher does when done. Not by closing alone: the backend drops its session locks as it
        # exits, after the close has returned, so the next finisher could still find the lock taken (flaky).
        with other.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", FINISHER_LOCK)
        other.close()
    with responses.RequestsMock() as mock:
        mock.post(FORGET_URL, status=204)
        assert erasures_finish() == {"delivered": 1, "refused": 0, "finished": 1}
