"""Membership changes -> outbox -> delivery, against Mailchimp's contract faked with `responses`."""

import json
from datetime import timedelta

import pytest
import responses
from django.core.exceptions import ValidationError
from django.db import connection as db
from django.utils import timezone

from audiences import profiles
from audiences import services as audience_services
from audiences.models import MembershipChange
from connections.models import Connection, ConnectionMember
from forwarding import lifecycle as connection_services
from forwarding import planner, recovery, sweeper
from forwarding.delivery import deliver_connection
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.selectors import connection_stats
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"
OK = {"new_members": [], "updated_members": [], "errors": [], "error_count": 0}


def sent_members(call_index=-1):
    return json.loads(responses.calls[call_index].request.body)["members"]


@pytest.fixture
def setup(rings):
    audience = factories.active_audience()
    output = factories.mailchimp_output()
    return audience, output


def test_entering_audience_queues_an_add_per_email_and_nothing_for_other_identities(setup):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("one@x.com", gaid="38400000-8cf0-11bd-b23e-10b96e40000d")
    profiles.profile_upsert(
        identities=[{"type": "email", "value": "two@x.com"}, {"type": "email", "value": "deux@x.com"}],
        attributes={"status": "Premium", "favourite_city": "paris"},
    )
    factories.profile(gaid="48400000-8cf0-11bd-b23e-10b96e40000d", status="Premium", favourite_city="Paris")
    factories.profile(email="lyon@x.com", status="Premium", favourite_city="Lyon")  # does not match
    pending = set(PendingChange.objects.values_list("identity_type", "value", "action"))
    assert pending == {("email", v, "add") for v in ("one@x.com", "two@x.com", "deux@x.com")}
    stats = connection_stats(connection)
    assert (stats.audience_size, stats.with_accepted_identity, stats.without_accepted_identity) == (3, 2, 1)
    assert MembershipChange.objects.filter(kind="entered").count() == 3


@responses.activate
def test_connecting_sends_the_whole_membership_then_changes_follow(setup, rings):
    audience, output = setup
    for i in range(3):
        factories.parisian(f"p{i}@x.com")
    factories.parisian(None)  # a member without an email
    connection = factories.connect(audience, output)
    assert PendingChange.objects.filter(connection=connection).count() == 3
    responses.post(LIST_URL, json=OK)

    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 3
    assert {m["email_address"] for m in sent_members()} == {"p0@x.com", "p1@x.com", "p2@x.com"}
    assert {m["status"] for m in sent_members()} == {"subscribed"}
    assert not PendingChange.objects.exists()
    assert connection_stats(connection).delivered == 3
    # p1 stops matching: Mailchimp is told to unsubscribe them.
    profiles.profile_upsert(identities=[{"type": "email", "value": "p1@x.com"}], attributes={"status": "Free"})
    deliver_connection(connection_id=connection.pk)
    assert sent_members() == [{"email_address": "p1@x.com", "email_type": "html", "status": "unsubscribed"}]
    assert ConnectionMember.objects.get(value="p1@x.com").state == "removed"
    attempt = DeliveryAttempt.objects.first()
    assert (attempt.sent, attempt.delivered, attempt.result) == (1, 1, "ok")


@responses.activate
def test_batches_are_split_at_mailchimps_limit_of_500(setup):
    audience, output = setup
    connection = factories.connect(audience, output)
    profiles = [factories.parisian(f"u{i}@x.com") for i in range(1, 1201)]
    assert len(profiles) == 1200
    responses.post(LIST_URL, json=OK)
    report = deliver_connection(connection_id=connection.pk)
    assert [len(sent_members(i)) for i in range(3)] == [500, 500, 200]
    assert report.delivered == 1200 and report.batches == 3


@responses.activate
def test_last_word_wins_and_removing_an_undelivered_member_sends_nothing(setup):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("flip@x.com")
    profiles.profile_upsert(identities=[{"type": "email", "value": "flip@x.com"}], attributes={"status": "Free"})
    assert list(PendingChange.objects.values_list("action", "version")) == [("remove", 2)]
    report = deliver_connection(connection_id=connection.pk)
    assert report.skipped == 1 and len(responses.calls) == 0
    assert not PendingChange.objects.exists()


@pytest.mark.django_db(transaction=True)  # the answer plans in the call's thread: committed data
@responses.activate
def test_a_newer_word_arriving_during_delivery_is_kept(setup):
    if db.vendor != "postgresql":  # SQLite's shared in-memory test database locks whole tables across threads
        service_missing("the answer plans in the drain's caller thread: a second thread's writes need PostgreSQL")
    audience, output = setup
    connection = factories.connect(audience, output)
    profile = factories.parisian("race@x.com")

    def answer(request):
        # While Mailchimp handles the add, the user leaves the audience.
        if len(responses.calls) == 0:
            planner.plan_for_profiles(audience_id=audience.pk, profile_ids=[profile.pk], action="remove")
        return (200, {}, json.dumps(OK))

    responses.add_callback(responses.POST, LIST_URL, callback=answer)
    report = deliver_connection(connection_id=connection.pk)
    # The add went out; the removal that replaced it meanwhile was not deleted with it, and
    # went out in the next batch (without the version guard it would be lost).
    assert [m["status"] for m in (sent_members(0)[0], sent_members(1)[0])] == ["subscribed", "unsubscribed"]
    assert report.batches == 2
    assert ConnectionMember.objects.get(value="race@x.com").state == "removed"
    assert not PendingChange.objects.exists()


@responses.activate
def test_a_401_faults_the_connection_and_resume_sends_again(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    responses.post(
        LIST_URL,
        status=401,
        json={"title": "API Key Invalid", "status": 401, "detail": "Your API key may be invalid."},
        content_type="application/problem+json",
    )
    deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert connection.status == "faulted"
    assert "API Key Invalid" in connection.status_reason
    assert PendingChange.objects.count() == 1
    assert DeliveryAttempt.objects.get().result == "auth"

    responses.replace(responses.POST, LIST_URL, json=OK)
    connection_services.connection_resume(connection=connection)
    deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert connection.status == "sending" and connection.status_reason == ""
    assert not PendingChange.objects.exists()
    assert ConnectionMember.objects.get(value="a@x.com").state == "added"


@responses.activate
def test_429_throttles_the_whole_connection_for_its_retry_after(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    responses.post(LIST_URL, status=429, headers={"Retry-After": "120"}, json={"title": "Too Many Requests"})
    before = timezone.now()
    deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert connection.throttled_until >= before + timedelta(seconds=120)
    assert (connection.failures, connection.status) == (1, "sending")
    pending = PendingChange.objects.get()
    assert pending.attempts == 1 and pending.next_attempt_at <= timezone.now()  # due: the connection waits
    assert ("forwarding.tasks.deliver_connection", (connection.pk,)) == rings[-1][:2]
    assert rings[-1][2] >= 120
    # Throttled as a whole: neither a delivery nor the sweeper sends anything before then.
    assert deliver_connection(connection_id=connection.pk).batches == 0
    assert sweeper.sweep()["delivering"] == 0
    assert len(responses.calls) == 1
    # Once the wait is over, the partner answering ends the run of failures.
    Connection.objects.filter(pk=connection.pk).update(throttled_until=timezone.now())
    responses.replace(responses.POST, LIST_URL, json=OK)
    assert deliver_connection(connection_id=connection.pk).delivered == 1
    connection.refresh_from_db()
    assert (connection.failures, connection.failing_since) == (0, None)


@responses.activate
def test_server_errors_back_the_connection_off_exponentially_and_probe_with_a_small_batch(setup, rings, settings):
    settings.FORWARDING = {**settings.FORWARDING, "BACKOFF_BASE_SECONDS": 2, "PROBE_MAX_SECONDS": 1000}
    audience, output = setup
    connection = factories.connect(audience, output)
    for n in range(30):
        factories.parisian(f"p{n}@x.com")
    responses.post(LIST_URL, status=503, body="")
    waits, sizes = [], []
    for failures in range(1, 6):
        start = timezone.now()
        deliver_connection(connection_id=connection.pk)
        connection.refresh_from_db()
        assert connection.failures == failures
        waits.append((connection.throttled_until - start).total_seconds())
        sizes.append(len(sent_members()))
        Connection.objects.filter(pk=connection.pk).update(throttled_until=None)
    # The first call is a full batch; every later one, while failing, a probe of 10 members.
    assert sizes == [30, 10, 10, 10, 10]
    for n, wait in enumerate(waits, start=1):
        assert 2 * 2 ** (n - 1) / 2 <= wait <= 2 * 2 ** (n - 1) + 1, waits
    assert connection.status == "sending"
    # The partner is back: the probe goes through and the whole backlog goes out at once.
    responses.replace(responses.POST, LIST_URL, json=OK)
    calls = len(responses.calls)
    report = deliver_connection(connection_id=connection.pk)
    assert report.delivered == 30 and len(responses.calls) == calls + 2
    assert not PendingChange.objects.exists()


@responses.activate
def test_a_long_outage_faults_the_connection_and_a_probe_resumes_it(
    setup, rings, settings, django_capture_on_commit_callbacks
):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    responses.post(LIST_URL, status=503, body="")
    deliver_connection(connection_id=connection.pk)
    minutes = settings.FORWARDING["OUTAGE_FAULT_MINUTES"]
    Connection.objects.filter(pk=connection.pk).update(
        throttled_until=None, failing_since=timezone.now() - timedelta(minutes=minutes, seconds=1)
    )
    deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert (connection.status, connection.fault_cause) == ("faulted", "outage")
    assert f"Every call failed for {minutes:g} minutes" in connection.status_reason
    # The sweeper probes it once its wait is over; the partner still failing keeps it faulted.
    Connection.objects.filter(pk=connection.pk).update(throttled_until=None)
    rings.clear()
    assert sweeper.sweep()["probing"] == 1
    assert rings == [("forwarding.tasks.probe_connection", (connection.pk,), None)]
    responses.get(LIST_URL, status=503, body="")
    assert recovery.probe_faulted(connection.pk).startswith("still failing")
    assert recovery.probe_faulted(connection.pk) == "not due"  # one probe per interval
    assert sweeper.sweep()["probing"] == 0
    # The partner answers again: resumed by itself, the outbox due, delivery rung.
    Connection.objects.filter(pk=connection.pk).update(throttled_until=None)
    responses.replace(responses.GET, LIST_URL, json={"name": "List", "stats": {}})
    with django_capture_on_commit_callbacks(execute=True):
        assert recovery.probe_faulted(connection.pk) == "resumed"
    connection.refresh_from_db()
    assert (connection.status, connection.fault_cause, connection.failures) == ("sending", "", 0)
    assert ("forwarding.tasks.deliver_connection", (connection.pk,), None) in rings


@responses.activate
def test_a_refused_key_is_not_probed_and_resumes_only_when_the_test_passes(setup, rings):
    audience, output = setup
    factories.parisian("a@x.com")
    responses.post(LIST_URL, status=401, json={"title": "API Key Invalid", "detail": "Your API key may be invalid"})
    connection = factories.connect(audience, output)
    deliver_connection(connection_id=connection.pk)
    connection.refresh_from_db()
    assert (connection.status, connection.fault_cause) == ("faulted", "refused")
    assert sweeper.sweep()["probing"] == 0
    responses.get(LIST_URL, status=401, json={"title": "API Key Invalid", "detail": "Your API key may be invalid"})
    with pytest.raises(ValidationError) as excinfo:
        connection_services.connection_resume_if_test_passes(connection=connection)
    assert "API Key Invalid" in str(excinfo.value.message_dict["status"])
    connection.refresh_from_db()
    assert connection.status == "faulted"
    responses.replace(responses.GET, LIST_URL, json={"name": "List", "stats": {}})
    connection = connection_services.connection_resume_if_test_passes(connection=connection)
    assert (connection.status, connection.fault_cause) == ("sending", "")


@responses.activate
def test_rejected_members_are_recorded_with_mailchimps_reason(setup):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("good@x.com")
    factories.parisian("fake@x.com")
    responses.post(
        LIST_URL,
        json={
            "errors": [
                {
                    "email_address": "fake@x.com",
                    "error": "fake@x.com looks fake or invalid, please enter a real email address.",
                }
            ],
            "error_count": 1,
        },
    )
    report = deliver_connection(connection_id=connection.pk)
    assert (report.delivered, report.rejected) == (1, 1)
    rejected = ConnectionMember.objects.get(value="fake@x.com")
    assert rejected.state == "rejected" and "looks fake" in rejected.reason
    stats = connection_stats(connection)
    assert (stats.delivered, stats.rejected, stats.pending) == (1, 1, 0)
    assert DeliveryAttempt.objects.get().result == "partial"


@responses.activate
def test_paused_connections_keep_their_outbox_and_catch_up_on_resume(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    connection_services.connection_pause(connection=connection)
    factories.parisian("a@x.com")
    factories.parisian("b@x.com")
    assert deliver_connection(connection_id=connection.pk).delivered == 0
    assert PendingChange.objects.count() == 2
    responses.post(LIST_URL, json=OK)
    connection_services.connection_resume(connection=connection)
    assert deliver_connection(connection_id=connection.pk).delivered == 2


@responses.activate
def test_a_held_lease_makes_a_second_delivery_a_no_op(setup):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() + timedelta(minutes=1))
    assert deliver_connection(connection_id=connection.pk).batches == 0
    # An expired lease (a killed worker) is taken over.
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() - timedelta(seconds=1))
    responses.post(LIST_URL, json=OK)
    assert deliver_connection(connection_id=connection.pk).delivered == 1


@responses.activate
def test_deleting_a_connection_archives_what_it_delivered_then_removes_it(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    factories.parisian("b@x.com")
    responses.post(LIST_URL, json=OK)
    deliver_connection(connection_id=connection.pk)
    from outputs.partners.mailchimp import subscriber_hash

    for email in ("a@x.com", "b@x.com"):
        responses.delete(f"{LIST_URL}/members/{subscriber_hash(email)}", status=204)
    connection_services.connection_delete(connection=connection)
    connection.refresh_from_db()
    assert connection.status == "ending"
    assert connection_services.connection_end(connection_id=connection.pk) == "deleted"
    assert not Connection.objects.filter(pk=connection.pk).exists()
    assert sorted(c.request.method for c in responses.calls) == ["DELETE", "DELETE", "POST"]


def test_deleting_without_delete_on_subscription_end_leaves_the_list_alone(rings):
    audience = factories.active_audience()
    output = factories.mailchimp_output(delete_on_subscription_end=False)
    connection = factories.connect(audience, output)
    ConnectionMember.objects.create(
        connection=connection, identity_type="email", value="a@x.com", state="added", updated_at=timezone.now()
    )
    connection_services.connection_delete(connection=connection)
    with responses.RequestsMock():
        assert connection_services.connection_end(connection_id=connection.pk) == "deleted"


@responses.activate
def test_new_criteria_forward_only_the_difference(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("stays@x.com", age=40)
    factories.parisian("leaves@x.com", age=20)
    factories.profile(email="joins@x.com", status="Premium", favourite_city="Paris", age=50)
    responses.post(LIST_URL, json=OK)
    deliver_connection(connection_id=connection.pk)
    assert len(sent_members()) == 3
    older = {"and": [*factories.PARISIANS["and"], {"attribute": "age", "operator": "greater_than", "value": 30}]}
    audience = audience_services.audience_update(audience=audience, criteria=older)
    result = audience_services.audience_recompute(audience_id=audience.pk)
    assert (result["entered"], result["left"]) == (0, 1)
    deliver_connection(connection_id=connection.pk)
    assert sent_members() == [{"email_address": "leaves@x.com", "email_type": "html", "status": "unsubscribed"}]


def test_connections_to_archived_audiences_are_refused(rings):
    from django.core.exceptions import ValidationError

    audience = factories.active_audience()
    output = factories.mailchimp_output()
    audience_services.audience_update(audience=audience, status="archived")
    with pytest.raises(ValidationError) as excinfo:
        factories.connect(audience, output)
    assert "audience" in excinfo.value.message_dict
    assert not Connection.objects.exists()


def test_archiving_a_connected_audience_is_refused(setup):
    from django.core.exceptions import ValidationError

    audience, output = setup
    factories.connect(audience, output)
    with pytest.raises(ValidationError) as excinfo:
        audience_services.audience_update(audience=audience, status="archived")
    assert "status" in excinfo.value.message_dict


def test_sweeper_rings_connections_with_due_work_and_no_live_lease(setup, rings):
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("a@x.com")
    rings.clear()
    assert sweeper.sweep()["delivering"] == 1
    assert rings == [("forwarding.tasks.deliver_connection", (connection.pk,), None)]
    Connection.objects.filter(pk=connection.pk).update(delivery_lease_until=timezone.now() + timedelta(minutes=1))
    assert sweeper.sweep()["delivering"] == 0


@responses.activate
def test_a_per_member_retry_backs_off_that_member_alone(setup, rings, settings):
    settings.FORWARDING = {**settings.FORWARDING, "BACKOFF_BASE_SECONDS": 10}
    audience, output = setup
    connection = factories.connect(audience, output)
    factories.parisian("busy@x.com")
    factories.parisian("fine@x.com")
    busy = {"email_address": "busy@x.com", "error": "busy@x.com has signed up to a lot of lists very recently"}
    responses.post(LIST_URL, json={"errors": [busy], "error_count": 1})
    before = timezone.now()
    report = deliver_connection(connection_id=connection.pk)
    assert (report.delivered, report.retried, report.rejected) == (1, 1, 0)
    pending = PendingChange.objects.get()
    assert pending.value == "busy@x.com" and pending.attempts == 1
    # Backed off on its own (the first band of 10 s: 5 to 10 s), never rejected ...
    assert before + timedelta(seconds=5) <= pending.next_attempt_at <= timezone.now() + timedelta(seconds=10)
    # (written ahead as maybe held while the call ran, never recorded as added or refused)
    assert not ConnectionMember.objects.filter(value="busy@x.com").exclude(state=ConnectionMember.State.MAYBE_HELD)
    # ... while the connection as a whole is healthy and not waiting.
    connection.refresh_from_db()
    assert (connection.failures, connection.throttled_until) == (0, None)
    assert deliver_connection(connection_id=connection.pk).batches == 0  # not due yet
