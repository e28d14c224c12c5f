"""Bulk uploads on upload criteria (forwarding/bulk.py), as a connection's user sees them: per-connection
criteria edited in the admin and the API (bad input named, never a 500), the count trigger queued at commit
without beat, the time trigger by beat's check, "upload now", the upload records, coalescing across an upload
window, and a killed upload resumed by the next one sending only what it had not recorded. Against the tests'
own bulk partner (tests/fakes/partners.py), on the real database."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.messages import get_messages
from django.db import connection as db
from django.db import transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from audiences import profiles
from connections.models import Connection, ConnectionMember
from forwarding import bulk, tasks
from forwarding.lifecycle import connection_pause
from forwarding.models import DeliveryAttempt, PendingChange, Upload
from outputs.partners.base import MemberResult, Outcome
from outputs.partners.http import TransientError
from tests import factories
from tests.fakes.partners import BulkListPartner
from tests.fixtures.api import errors

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(bulk_connection):
    return bulk_connection


def url(connection, suffix=""):
    return f"/api/v1/connections/{connection.pk}/{suffix}"


def uploads_queued(rings):
    return [args for name, args, _ in rings if name == bulk.UPLOAD_TASK]


def sent():
    return [(c.action.value, c.value) for _, _, changes in BulkListPartner.calls for c in changes]


def leave(email):
    profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"status": "Free"})


# --- criteria ----------------------------------------------------------------------------------------


def test_a_connection_has_its_partner_s_criteria_until_it_has_its_own(connection):
    assert bulk.upload_criteria(connection) == BulkListPartner.default_upload_criteria  # 30 min / 5

    bulk.connection_set_upload_criteria(connection=connection, values={"upload_messages": 2})
    criteria = bulk.upload_criteria(Connection.objects.get(pk=connection.pk))
    assert (criteria.wait, criteria.messages) == (timedelta(minutes=30), 2)

    for i in range(2):
        factories.parisian(f"u{i}@x.com")
    assert bulk.due_connections() == [connection.pk]  # 2 waiting: its own count, not the partner's 5

    bulk.connection_set_upload_criteria(connection=connection, values={"upload_messages": None})
    assert bulk.due_connections() == []  # back to the partner's 5


def test_its_own_wait_makes_the_upload_due_sooner(connection):
    bulk.connection_set_upload_criteria(connection=connection, values={"upload_wait_minutes": 2})
    factories.parisian("early@x.com")
    now = timezone.now()
    assert bulk.due_connections(now=now + timedelta(minutes=1)) == []
    assert bulk.due_connections(now=now + timedelta(minutes=3)) == [connection.pk]


def test_the_api_shows_a_bulk_connection_s_uploads_and_null_for_a_realtime_one(api, bulk_audience, connection):
    factories.parisian("a@x.com")
    factories.parisian("b@x.com")
    oldest = PendingChange.objects.filter(connection=connection).order_by("created_at").first().created_at

    body = api.get(url(connection)).json()

    assert (body["upload_wait_minutes"], body["upload_messages"]) == (None, None)
    upload = body["upload"]
    assert upload["criteria"] == upload["default_criteria"] == {"wait_minutes": 30, "messages": 5}
    assert upload["waiting"] == 2
    assert upload["oldest_waiting_since"] == oldest.isoformat().replace("+00:00", "Z")
    assert upload["next_upload_due_at"] == (oldest + timedelta(minutes=30)).isoformat().replace("+00:00", "Z")
    assert upload["last_upload"] is None
    realtime = factories.connect(bulk_audience, factories.mailchimp_output())
    assert api.get(url(realtime)).json()["upload"] is None


def test_the_api_edits_the_criteria_and_null_restores_the_partner_s(api, connection):
    response = api.patch(url(connection), {"upload_wait_minutes": 60, "upload_messages": 1000}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["upload"]["criteria"] == {"wait_minutes": 60, "messages": 1000}
    assert response.json()["upload_wait_minutes"] == 60
    connection.refresh_from_db()
    assert (connection.upload_wait_minutes, connection.upload_messages) == (60, 1000)

    response = api.patch(url(connection), {"upload_wait_minutes": None}, format="json")
    assert response.json()["upload"]["criteria"] == {"wait_minutes": 30, "messages": 1000}
    # PUT takes them beside the status it requires.
    response = api.put(url(connection), {"status": "sending", "upload_messages": 7}, format="json")
    assert response.status_code == 200 and response.json()["upload"]["criteria"]["messages"] == 7


@pytest.mark.parametrize(
    "body, field",
    [
        ({"upload_wait_minutes": 0}, "upload_wait_minutes"),
        ({"upload_wait_minutes": -5}, "upload_wait_minutes"),
        ({"upload_wait_minutes": 7 * 24 * 60 + 1}, "upload_wait_minutes"),
        ({"upload_wait_minutes": 1.5}, "upload_wait_minutes"),
        ({"upload_wait_minutes": True}, "upload_wait_minutes"),
        ({"upload_messages": "many"}, "upload_messages"),
        ({"upload_messages": 10_000_001}, "upload_messages"),
        ({"upload_messages": 10**30}, "upload_messages"),
        ({"upload_messages": [5]}, "upload_messages"),
    ],
)
def test_bad_criteria_are_a_400_naming_the_field_and_change_nothing(api, connection, body, field):
    response = api.patch(url(connection), {**body, "status": "paused"}, format="json")

    assert response.status_code == 400
    assert list(errors(response)) == [field]
    connection.refresh_from_db()
    assert (connection.upload_wait_minutes, connection.upload_messages, connection.status) == (None, None, "sending")


def test_a_realtime_connection_has_no_criteria_to_edit(api, bulk_audience):
    realtime = factories.connect(bulk_audience, factories.mailchimp_output())

    response = api.patch(url(realtime), {"upload_messages": 10}, format="json")

    assert response.status_code == 400
    assert errors(response) == {
        "upload_messages": ["Mailchimp receives changes in real time: its connections have no upload criteria."]
    }
    assert Connection.objects.get(pk=realtime.pk).upload_messages is None


def test_the_admin_shows_the_uploads_and_edits_the_criteria(admin_client, connection):
    factories.parisian("a@x.com")
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert 'id="connection-uploads"' in page
    assert "wait 30 minutes or 5 messages, whichever comes first (the partner&#x27;s defaults)" in page
    assert "1 change, the oldest since" in page and "Upload now" in page
    criteria_url = reverse("admin:connections_connection_upload_criteria", args=[connection.pk])
    assert criteria_url in page

    form = admin_client.get(criteria_url).content.decode()
    assert "Empty: Bulk list&#x27;s default, 30 minutes." in form
    response = admin_client.post(criteria_url, {"upload_wait_minutes": "90", "upload_messages": ""})
    assert response.status_code == 302
    connection.refresh_from_db()
    assert (connection.upload_wait_minutes, connection.upload_messages) == (90, None)
    page = admin_client.get(reverse("admin:connections_connection_change", args=[connection.pk])).content.decode()
    assert "wait 90 minutes or 5 messages" in page and "set for this connection" in page


@pytest.mark.parametrize(
    "data, field, message",
    [
        ({"upload_wait_minutes": "0"}, "upload_wait_minutes", "Ensure this value is greater than or equal to 1."),
        ({"upload_messages": "lots"}, "upload_messages", "Enter a whole number."),
        ({"upload_messages": "10000001"}, "upload_messages", "less than or equal to 10000000"),
    ],
)
def test_bad_criteria_in_the_admin_are_shown_on_their_field(admin_client, connection, data, field, message):
    response = admin_client.post(reverse("admin:connections_connection_upload_criteria", args=[connection.pk]), data)

    assert response.status_code == 200
    assert message in " ".join(response.context["form"].errors[field])
    connection.refresh_from_db()
    assert (connection.upload_wait_minutes, connection.upload_messages) == (None, None)


def test_a_realtime_connection_s_page_has_no_uploads(admin_client, bulk_audience):
    realtime = factories.connect(bulk_audience, factories.mailchimp_output())
    page = admin_client.get(reverse("admin:connections_connection_change", args=[realtime.pk])).content.decode()
    assert 'id="connection-uploads"' not in page and "Upload now" not in page
    response = admin_client.get(reverse("admin:connections_connection_upload_criteria", args=[realtime.pk]))
    assert response.status_code == 302  # back to the page, saying why


# --- triggers ----------------------------------------------------------------------------------------


def test_beat_s_check_queues_a_time_upload_and_the_upload_is_recorded(connection, rings):
    for i in range(3):
        factories.parisian(f"u{i}@x.com")
    later = timezone.now() + timedelta(minutes=31)

    assert bulk.flush_due_uploads(now=later)["uploading"] == 1
    assert uploads_queued(rings) == [(connection.pk, "time")]

    tasks.upload_connection(connection.pk, "time")  # what the queued task runs

    upload = Upload.objects.get(connection=connection)
    assert (upload.trigger, upload.outcome, upload.batches) == ("time", "ok", 2)
    assert (upload.sent, upload.delivered, upload.rejected, upload.skipped) == (3, 3, 0, 0)
    assert upload.finished_at >= upload.started_at
    assert not PendingChange.objects.filter(connection=connection).exists()


def test_five_waiting_make_beat_s_check_a_count_upload(connection, rings):
    for i in range(5):
        factories.parisian(f"u{i}@x.com")
    bulk.flush_due_uploads()
    assert uploads_queued(rings)[-1] == (connection.pk, "count")


def test_the_count_trigger_queues_the_upload_at_commit_without_beat_counting_only_when_it_may_be_due(
    committed_bulk_connection, rings
):
    connection = committed_bulk_connection
    factories.parisian("u0@x.com")  # counted once: 1 waiting, headroom 4
    with CaptureQueriesContext(db) as queries:
        for i in range(1, 4):
            factories.parisian(f"u{i}@x.com")  # each request its own transaction: 2, 3, 4 waiting
    assert [q for q in queries.captured_queries if "AS waiting" in q["sql"]] == []  # the headroom spared them
    assert uploads_queued(rings) == []

    with transaction.atomic():
        factories.parisian("u4@x.com")  # the fifth
        assert uploads_queued(rings) == []  # not before the commit
    assert uploads_queued(rings) == [(connection.pk, "count")]

    # A rolled-back change queues nothing.
    rings.clear()
    with transaction.atomic():
        factories.parisian("u5@x.com")
        transaction.set_rollback(True)
    assert uploads_queued(rings) == []


def test_with_redis_unreachable_every_transaction_counts_and_the_trigger_still_fires(
    committed_bulk_connection, rings, settings
):
    settings.RATE_LIMIT_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    for i in range(5):
        factories.parisian(f"u{i}@x.com")
    assert uploads_queued(rings) == [(committed_bulk_connection.pk, "count")]


def test_the_count_is_checked_once_per_transaction_and_not_for_realtime_connections(committed_bulk_connection, rings):
    connection = committed_bulk_connection
    factories.connect(connection.audience, factories.mailchimp_output())
    with CaptureQueriesContext(db) as queries:
        with transaction.atomic():
            for i in range(7):
                factories.parisian(f"u{i}@x.com")  # seven planning calls in one transaction
    counts = [q["sql"] for q in queries.captured_queries if "AS waiting" in q["sql"]]
    assert len(counts) == 1 and f"connection_id = {connection.pk}" in counts[0]
    assert uploads_queued(rings) == [(connection.pk, "count")]

    # A connection not sending is never queued.
    rings.clear()
    connection_pause(connection=connection)
    factories.parisian("u9@x.com")
    assert uploads_queued(rings) == []


def test_lowering_the_count_below_the_backlog_makes_the_upload_due_at_once(committed_bulk_connection, rings):
    connection = committed_bulk_connection
    for i in range(3):
        factories.parisian(f"u{i}@x.com")
    assert uploads_queued(rings) == []
    bulk.connection_set_upload_criteria(connection=connection, values={"upload_messages": 3})
    assert uploads_queued(rings) == [(connection.pk, "count")]


# --- upload now ----------------------------------------------------------------------------------------


def test_upload_now_in_the_api_queues_a_manual_upload(api, connection, rings, django_capture_on_commit_callbacks):
    factories.parisian("a@x.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(url(connection, "upload-now/"))
    assert response.status_code == 202 and response.json()["id"] == connection.pk
    assert uploads_queued(rings) == [(connection.pk, "manual")]

    tasks.upload_connection(connection.pk, "manual")
    body = api.get(url(connection)).json()["upload"]
    assert body["waiting"] == 0 and body["next_upload_due_at"] is None
    last = body["last_upload"]
    assert (last["trigger"], last["outcome"], last["running"], last["sent"], last["delivered"]) == (
        "manual",
        "ok",
        False,
        1,
        1,
    )


def test_upload_now_is_refused_with_a_reason(api, bulk_audience, connection, rings):
    response = api.post(url(connection, "upload-now/"))
    assert (response.status_code, response.json()["code"]) == (409, "conflict")
    assert response.json()["detail"] == "Nothing to upload: no change is waiting."

    factories.parisian("a@x.com")
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now() + timedelta(seconds=30))
    response = api.post(url(connection, "upload-now/"))
    assert response.status_code == 409 and "the upload goes out then" in response.json()["detail"]

    Connection.objects.filter(pk=connection.pk).update(throttled_until=None)
    connection_pause(connection=connection)
    response = api.post(url(connection, "upload-now/"))
    assert response.status_code == 409 and "paused" in response.json()["detail"]

    realtime = factories.connect(bulk_audience, factories.mailchimp_output())
    response = api.post(url(realtime, "upload-now/"))
    assert response.status_code == 409
    assert response.json()["detail"] == "Mailchimp receives changes in real time: there is no upload to start."
    assert uploads_queued(rings) == []


def test_upload_now_in_the_admin(admin_client, connection, rings, django_capture_on_commit_callbacks):
    button = reverse("admin:connections_connection_upload-now", args=[connection.pk])
    response = admin_client.post(button)
    assert [m.message for m in get_messages(response.wsgi_request)] == [
        "Not uploaded: Nothing to upload: no change is waiting."
    ]

    factories.parisian("a@x.com")
    with django_capture_on_commit_callbacks(execute=True):
        response = admin_client.post(button)
    assert [m.message for m in get_messages(response.wsgi_request)][-1] == "Uploading now: 1 waiting change."
    assert uploads_queued(rings) == [(connection.pk, "manual")]


# --- what an upload sends --------------------------------------------------------------------------------


def test_added_then_removed_between_two_uploads_sends_nothing_and_leaves_no_upload(connection):
    factories.parisian("flip@x.com")
    leave("flip@x.com")

    report = bulk.upload_connection(connection_id=connection.pk)

    assert report.skipped == 1 and BulkListPartner.calls == []
    upload = Upload.objects.get()
    assert (upload.outcome, upload.sent, upload.skipped) == ("ok", 0, 1)


def test_removed_then_re_added_sends_the_add_only_when_the_partner_does_not_hold_it(connection):
    factories.parisian("held@x.com")
    bulk.upload_connection(connection_id=connection.pk)  # the partner holds held@x.com now
    assert sent() == [("add", "held@x.com")]
    BulkListPartner.calls.clear()

    leave("held@x.com")
    factories.parisian("held@x.com")  # back before the next upload: its last word is an add
    factories.parisian("new@x.com")
    leave("new@x.com")
    factories.parisian("new@x.com")  # never sent: the add goes out

    report = bulk.upload_connection(connection_id=connection.pk)

    assert sent() == [("add", "new@x.com")]
    assert report.skipped == 1  # held@x.com's add: the partner holds it already
    assert not PendingChange.objects.filter(connection=connection).exists()
    held = dict(ConnectionMember.objects.filter(connection=connection).values_list("value", "state"))
    assert held == {"held@x.com": "added", "new@x.com": "added"}


def test_a_held_member_re_added_with_other_attributes_is_sent_only_the_identical_add_is_dropped(connection):
    factories.parisian("same@x.com")
    factories.parisian("moved@x.com")
    bulk.upload_connection(connection_id=connection.pk)  # the partner holds both, with these attributes
    BulkListPartner.calls.clear()

    for email in ("same@x.com", "moved@x.com"):
        leave(email)
    factories.parisian("same@x.com")  # back as it was: the partner holds exactly this
    factories.parisian("moved@x.com", plan="Gold")  # back with an attribute the partner does not hold

    report = bulk.upload_connection(connection_id=connection.pk)

    assert sent() == [("add", "moved@x.com")]
    assert report.skipped == 1
    sent_attributes = [c.attributes for _, _, changes in BulkListPartner.calls for c in changes]
    assert sent_attributes[0]["plan"] == "Gold"
    assert not PendingChange.objects.filter(connection=connection).exists()


def test_an_add_of_a_member_held_with_unknown_content_is_sent(connection):
    """A member found at the partner (a reconcile's "added", fingerprint blank): what it holds is unknown."""
    factories.parisian("found@x.com")
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="found@x.com", state="added", updated_at=timezone.now()
    )

    assert bulk.drop_held_adds(connection.pk) == 0
    bulk.upload_connection(connection_id=connection.pk)

    assert sent() == [("add", "found@x.com")]


def test_dropping_held_adds_keeps_a_newer_word_and_counts_what_it_dropped(connection, monkeypatch):
    emails = [f"h{i}@x.com" for i in range(5)]
    for email in emails:
        factories.parisian(email)
    bulk.upload_connection(connection_id=connection.pk)
    for email in emails:
        leave(email)
        factories.parisian(email)
    monkeypatch.setattr(bulk, "HELD_ADDS_CHUNK", 2)  # three chunks
    real = bulk._add_fingerprint

    def newer_word_meanwhile(identity_type, value, attributes):
        if value == "h0@x.com":  # replaced after the candidates were read, before they are dropped
            PendingChange.objects.filter(connection=connection, value=value).update(version=99)
        return real(identity_type, value, attributes)

    monkeypatch.setattr(bulk, "_add_fingerprint", newer_word_meanwhile)

    assert bulk.drop_held_adds(connection.pk) == 4
    assert list(PendingChange.objects.filter(connection=connection).values_list("value", flat=True)) == ["h0@x.com"]


def test_a_held_member_s_removal_is_sent(connection):
    factories.parisian("gone@x.com")
    bulk.upload_connection(connection_id=connection.pk)
    BulkListPartner.calls.clear()
    leave("gone@x.com")
    bulk.upload_connection(connection_id=connection.pk)
    assert sent() == [("remove", "gone@x.com")]


def test_a_duplicate_trigger_finding_nothing_leaves_no_upload(connection):
    assert bulk.upload_connection(connection_id=connection.pk, trigger="count").batches == 0
    assert not Upload.objects.exists()


def test_a_failed_upload_says_why_and_the_rest_waits(connection, monkeypatch, rings):
    for i in range(3):
        factories.parisian(f"u{i}@x.com")

    def down(self, settings, audience, changes):
        raise TransientError("HTTP 503: try later", status=503)

    monkeypatch.setattr(BulkListPartner, "apply_batch", down)
    bulk.upload_connection(connection_id=connection.pk, trigger="manual")

    upload = Upload.objects.get()
    assert (upload.outcome, upload.detail, upload.sent, upload.delivered) == ("failed", "HTTP 503: try later", 2, 0)
    assert PendingChange.objects.filter(connection=connection).count() == 3


def test_rejections_make_a_partial_upload(connection, monkeypatch):
    factories.parisian("ok@x.com")
    factories.parisian("bad@x.com")

    def picky(self, settings, audience, changes):
        return [
            MemberResult(c, Outcome.REJECTED, "invalid")
            if c.value.startswith("bad")
            else MemberResult(c, Outcome.DELIVERED)
            for c in changes
        ]

    monkeypatch.setattr(BulkListPartner, "apply_batch", picky)
    bulk.upload_connection(connection_id=connection.pk)
    upload = Upload.objects.get()
    assert (upload.outcome, upload.sent, upload.delivered, upload.rejected) == ("partial", 2, 1, 1)


def test_beat_s_check_purges_month_old_uploads_but_each_connection_s_last(connection):
    now = timezone.now()
    for days in (45, 40, 31):
        Upload.objects.create(connection=connection, trigger="time", started_at=now - timedelta(days=days))

    assert bulk.flush_due_uploads(now=now)["purged"] == 2
    assert [u.started_at for u in Upload.objects.all()] == [now - timedelta(days=31)]  # its last, kept


def test_a_bulk_connection_rung_again_is_uploaded_and_recorded_as_a_retry(connection):
    factories.parisian("a@x.com")
    tasks.deliver_connection(connection.pk)  # e.g. the ring after a backoff, or a resume
    assert Upload.objects.get().trigger == "retry"
    assert sent() == [("add", "a@x.com")]


# --- a worker killed mid-upload -------------------------------------------------------------------------


class Killed(BaseException):
    """The worker process dying: nothing of ours runs after it (no except Exception catches it)."""


def test_a_killed_upload_loses_nothing_and_the_next_sends_only_what_it_had_not_recorded(connection, monkeypatch, rings):
    for i in range(5):
        factories.parisian(f"u{i}@x.com")  # batches of 2: [u0 u1] [u2 u3] [u4]
    applied = BulkListPartner.apply_batch

    def dies_on_the_second_call(self, settings, audience, changes):
        results = applied(self, settings, audience, changes)  # the partner applies the batch ...
        if len(BulkListPartner.calls) == 2:
            raise Killed  # ... and the worker is killed before recording its answer
        return results

    with monkeypatch.context() as dying, pytest.raises(Killed):
        dying.setattr(BulkListPartner, "apply_batch", dies_on_the_second_call)
        dying.setattr("forwarding.leases.release_lease", lambda lease: None)  # a dead worker releases nothing
        bulk.upload_connection(connection_id=connection.pk, trigger="count")
    killed = Upload.objects.get()
    assert killed.finished_at is None
    assert PendingChange.objects.filter(connection=connection).count() == 3  # the second and third batch
    states = dict(ConnectionMember.objects.filter(connection=connection).values_list("value", "state"))
    assert states == {"u0@x.com": "added", "u1@x.com": "added", "u2@x.com": "maybe_held", "u3@x.com": "maybe_held"}

    # While its lease lasts, nobody uploads; the page says it is not running only once the lease is gone.
    assert bulk.due_connections() == []
    assert bulk.upload_connection(connection_id=connection.pk).batches == 0
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() - timedelta(seconds=1))
    assert bulk.upload_status(Connection.objects.get(pk=connection.pk)).last_upload.outcome == "interrupted"
    # Beat's check resumes it at once, though 3 waiting are below the criteria's 5 and young.
    assert bulk.flush_due_uploads()["uploading"] == 1
    assert uploads_queued(rings)[-1] == (connection.pk, "retry")
    BulkListPartner.calls.clear()

    bulk.upload_connection(connection_id=connection.pk, trigger="time")

    assert sent() == [("add", "u2@x.com"), ("add", "u3@x.com"), ("add", "u4@x.com")]  # not u0, u1 again
    assert not PendingChange.objects.filter(connection=connection).exists()
    assert set(ConnectionMember.objects.filter(connection=connection).values_list("state", flat=True)) == {"added"}
    killed.refresh_from_db()
    assert (killed.outcome, killed.sent, killed.delivered) == ("interrupted", 2, 2)  # its one recorded call
    latest = Upload.objects.exclude(pk=killed.pk).get()
    assert (latest.trigger, latest.outcome, latest.delivered) == ("time", "ok", 3)
    assert DeliveryAttempt.objects.filter(connection=connection).count() == 3  # two calls recorded, 1 lost
