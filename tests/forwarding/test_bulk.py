"""forwarding/bulk.py: a bulk connection waits for its upload criteria; the sweeper leaves it alone and the
flusher uploads its coalesced outbox through delivery when it is due. Against a bulk partner of the tests'
own (tests/fakes/partners.py), on the real database."""

from datetime import timedelta

import pytest
import responses
from django.conf import settings
from django.utils import timezone

from audiences import profiles
from config.celery import app
from connections.models import Connection, ConnectionMember
from forwarding import bulk, sweeper, tasks
from forwarding.doorbell import DELIVER_TASK
from forwarding.lifecycle import connection_pause
from forwarding.models import DeliveryAttempt, PendingChange
from tests import factories
from tests.fakes.partners import BulkListPartner

pytestmark = pytest.mark.django_db
MAILCHIMP_LIST = "https://us6.api.mailchimp.com/3.0/lists/list1"


@pytest.fixture
def audience(bulk_audience):
    return bulk_audience


@pytest.fixture
def connection(bulk_connection):
    return bulk_connection


def uploads(rings):
    return [args[0] for name, args, _ in rings if name == bulk.UPLOAD_TASK]


def sent():
    return [c.value for _, _, changes in BulkListPartner.calls for c in changes]


def test_the_sweeper_rings_a_realtime_connection_and_leaves_a_bulk_one_to_the_flusher(audience, connection, rings):
    realtime = factories.connect(audience, factories.mailchimp_output())
    factories.parisian("a@x.com")
    rings.clear()

    report = sweeper.sweep()

    delivered = [args[0] for name, args, _ in rings if name == DELIVER_TASK]
    assert delivered == [realtime.pk] and report["delivering"] == 1
    assert PendingChange.objects.filter(connection=connection).count() == 1  # waiting, not lost
    assert BulkListPartner.calls == []


def test_nothing_is_uploaded_before_the_criteria_are_met(connection, rings):
    for i in range(4):
        factories.parisian(f"u{i}@x.com")

    assert bulk.due_connections() == []
    assert bulk.flush_due_uploads() == {"uploading": 0, "purged": 0}
    assert uploads(rings) == [] and BulkListPartner.calls == []


def test_the_fifth_change_makes_the_upload_due_and_the_upload_sends_the_whole_outbox_in_request_sizes(
    audience, connection, rings
):
    for i in range(5):
        factories.parisian(f"u{i}@x.com")

    assert bulk.flush_due_uploads()["uploading"] == 1
    assert uploads(rings) == [connection.pk]

    report = tasks.upload_connection(connection.pk)  # what the queued task runs

    assert report["delivered"] == 5 and report["batches"] == 3
    assert [len(changes) for _, _, changes in BulkListPartner.calls] == [2, 2, 1]  # batch_limit 2
    assert sorted(sent()) == [f"u{i}@x.com" for i in range(5)]
    assert {(a.id, a.name) for _, a, _ in BulkListPartner.calls} == {(audience.pk, audience.name)}
    assert not PendingChange.objects.filter(connection=connection).exists()
    assert ConnectionMember.objects.filter(connection=connection, state="added").count() == 5
    assert DeliveryAttempt.objects.filter(connection=connection, result="ok").count() == 3
    assert bulk.due_connections() == []  # nothing left: the next check queues nothing


def test_the_oldest_change_having_waited_the_criteria_s_minutes_makes_the_upload_due(connection):
    factories.parisian("early@x.com")
    now = timezone.now()

    assert bulk.due_connections(now=now) == []
    assert bulk.due_connections(now=now + timedelta(minutes=29)) == []
    assert bulk.due_connections(now=now + timedelta(minutes=31)) == [connection.pk]


def test_an_identity_added_then_removed_between_two_uploads_sends_nothing(connection):
    factories.parisian("flip@x.com")
    profiles.profile_upsert(identities=[{"type": "email", "value": "flip@x.com"}], attributes={"status": "Free"})
    assert list(PendingChange.objects.filter(connection=connection).values_list("action", flat=True)) == ["remove"]

    report = bulk.upload_connection(connection_id=connection.pk)

    assert report.skipped == 1 and BulkListPartner.calls == []
    assert not PendingChange.objects.filter(connection=connection).exists()


def test_a_connection_being_uploaded_paused_or_backing_off_is_not_queued_again(connection):
    for i in range(5):
        factories.parisian(f"u{i}@x.com")
    later = timezone.now() + timedelta(minutes=5)

    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=later)  # an upload in progress
    assert bulk.due_connections() == []
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() - timedelta(seconds=1))
    assert bulk.due_connections() == [connection.pk]  # a killed upload's lease expired: found again

    PendingChange.objects.filter(connection=connection).update(next_attempt_at=later)  # a failed upload backs off
    assert bulk.due_connections() == []
    assert bulk.due_connections(now=later) == [connection.pk]

    connection_pause(connection=connection)
    assert bulk.due_connections(now=later) == []


@responses.activate
def test_a_realtime_connection_is_never_the_flusher_s(audience, rings):
    factories.connect(audience, factories.mailchimp_output())
    for i in range(6):
        factories.parisian(f"u{i}@x.com")
    assert bulk.due_connections(now=timezone.now() + timedelta(days=1)) == []


def test_beat_checks_upload_criteria_by_a_task_defined_in_code():
    entry = settings.CELERY_BEAT_SCHEDULE["forwarding-bulk-uploads"]
    assert entry["task"] == "forwarding.tasks.flush_bulk_uploads"
    assert entry["schedule"] == timedelta(seconds=settings.FORWARDING["BULK_CHECK_INTERVAL"])
    assert {"forwarding.tasks.flush_bulk_uploads", bulk.UPLOAD_TASK} <= set(app.tasks)


def test_a_membership_change_rings_the_realtime_connection_at_commit_and_not_the_bulk_one(
    audience, connection, rings, django_capture_on_commit_callbacks
):
    realtime = factories.connect(audience, factories.mailchimp_output())
    rings.clear()
    with django_capture_on_commit_callbacks(execute=True):
        factories.parisian("a@x.com")

    assert [args[0] for name, args, _ in rings if name == DELIVER_TASK] == [realtime.pk]
    assert PendingChange.objects.filter(connection=connection).count() == 1
