"""Recomputing an audience: only the difference is written and forwarded, the clock moves members
out, and the periodic tasks. Each test runs on the database configured (PostgreSQL: the set-based
SQL path; SQLite: the per-profile fallback); those about the SQL path itself need PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings
from django.db import connection, connections, transaction
from django.utils import timezone

from audiences import profiles, services
from audiences.membership.locks import lock_audience_for_recompute
from audiences.membership.recompute import recompute_audience, recompute_backoff, recompute_time_based_audiences
from audiences.models import Audience, AudienceMembership, Event, Identity, MembershipChange, Profile
from config.celery import app as celery_app
from connections.models import Connection
from forwarding import sweeper
from forwarding.models import PendingChange
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}
PARIS = {"attribute": "favourite_city", "operator": "equals", "value": "Paris"}
WATCHED_PARIS = {
    "event": "Destination Intro",
    "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
    "frequency": {"operator": "at_least", "count": 1},
    "recency": {"within_last": {"amount": 30, "unit": "days"}},
}


def make_profile(email: str, **attributes) -> Profile:
    """Written directly, so real-time evaluation plays no part: only the recompute moves members."""
    profile = Profile.objects.create(attributes=attributes)
    Identity.objects.create(profile=profile, type="email", value=email)
    # An identity Mailchimp does not accept: it must never reach the outbox.
    Identity.objects.create(profile=profile, type="customer", value=f"c-{email}")
    return profile


def make_audience(criteria: dict, *, name: str = "Potential Parisians", status: str = "active", **fields) -> Audience:
    return Audience.objects.create(name=name, criteria=criteria, status=status, **fields)


def members(audience: Audience) -> set[str]:
    ids = AudienceMembership.objects.filter(audience=audience).values_list("profile_id", flat=True)
    return set(Identity.objects.filter(profile_id__in=ids, type="email").values_list("value", flat=True))


def pending(connection_: Connection | None = None) -> set[tuple[str, str]]:
    rows = PendingChange.objects.all()
    if connection_ is not None:
        rows = rows.filter(connection=connection_)
    assert not rows.exclude(identity_type="email").exists()
    return set(rows.values_list("value", "action"))


def change_log(audience: Audience) -> set[tuple[str, str, str]]:
    emails = dict(Identity.objects.filter(type="email").values_list("profile_id", "value"))
    rows = MembershipChange.objects.filter(audience=audience).values_list("profile_id", "kind", "reason")
    return {(emails[p], kind, reason) for p, kind, reason in rows}


def change_criteria(audience: Audience, criteria: dict) -> None:
    audience.criteria = criteria
    audience.criteria_version += 1
    audience.save()


@pytest.fixture
def parisians(rings):
    """Ann (premium, Paris) and Bob (premium, Lyon) are members; Cat (free, Paris) is not."""
    ann = make_profile("ann@x.com", status="Premium", favourite_city="Paris")
    bob = make_profile("bob@x.com", status="premium", favourite_city="Lyon")
    cat = make_profile("cat@x.com", status="Free", favourite_city="paris")
    audience = make_audience({"and": [PREMIUM]})
    first = recompute_audience(audience.pk, now=T0)
    assert (first.entered, first.left, first.size) == (2, 0, 2)
    return audience, ann, bob, cat


def test_first_recompute_enters_the_members_and_logs_why(parisians):
    audience, *_ = parisians
    assert members(audience) == {"ann@x.com", "bob@x.com"}
    assert change_log(audience) == {("ann@x.com", "entered", "recomputed"), ("bob@x.com", "entered", "recomputed")}
    assert MembershipChange.objects.filter(audience=audience).values_list("at", flat=True).distinct().get() == T0
    audience.refresh_from_db()
    assert audience.last_calculated_at == T0


def test_a_criteria_change_forwards_only_the_difference(parisians):
    audience, *_ = parisians
    connection_ = factories.connect(audience, factories.mailchimp_output())
    assert pending(connection_) == {("ann@x.com", "add"), ("bob@x.com", "add")}
    PendingChange.objects.all().delete()  # delivered

    change_criteria(audience, {"and": [PARIS]})
    result = recompute_audience(audience.pk, now=T0 + timedelta(hours=1), criteria_version=audience.criteria_version)

    assert (result.entered, result.left, result.size) == (1, 1, 2)
    assert members(audience) == {"ann@x.com", "cat@x.com"}
    # Ann stayed: nothing is sent for her.
    assert pending(connection_) == {("cat@x.com", "add"), ("bob@x.com", "remove")}
    assert {(e, k) for e, k, _ in change_log(audience)} == {
        ("ann@x.com", "entered"),
        ("bob@x.com", "entered"),
        ("cat@x.com", "entered"),
        ("bob@x.com", "left"),
    }


def test_a_second_run_changes_nothing(parisians):
    audience, *_ = parisians
    factories.connect(audience, factories.mailchimp_output())
    PendingChange.objects.all().delete()
    logged = MembershipChange.objects.count()

    again = recompute_audience(audience.pk, now=T0 + timedelta(minutes=5))

    assert (again.entered, again.left, again.size) == (0, 0, 2)
    assert MembershipChange.objects.count() == logged
    assert not PendingChange.objects.exists()


def test_a_stale_criteria_version_is_a_noop(parisians):
    audience, *_ = parisians
    queued_version = audience.criteria_version
    change_criteria(audience, {"and": [PARIS]})

    result = recompute_audience(audience.pk, criteria_version=queued_version)

    assert result.skipped and (result.entered, result.left) == (0, 0)
    assert members(audience) == {"ann@x.com", "bob@x.com"}
    assert services.audience_recompute(audience_id=audience.pk, criteria_version=queued_version) == {
        "entered": 0,
        "left": 0,
        "skipped": 1,
    }


def test_a_missing_audience_is_skipped(db):
    assert recompute_audience(987654).skipped


def test_an_audience_that_is_not_active_empties(parisians):
    audience, *_ = parisians
    connection_ = factories.connect(audience, factories.mailchimp_output())
    PendingChange.objects.all().delete()
    Audience.objects.filter(pk=audience.pk).update(status="draft")

    result = recompute_audience(audience.pk, now=T0 + timedelta(days=1))

    assert (result.entered, result.left, result.size) == (0, 2, 0)
    assert not AudienceMembership.objects.filter(audience=audience).exists()
    assert pending(connection_) == {("ann@x.com", "remove"), ("bob@x.com", "remove")}
    assert {(e, k) for e, k, _ in change_log(audience) if k == "left"} == {("ann@x.com", "left"), ("bob@x.com", "left")}


def test_the_outbox_coalesces_with_pending_changes(parisians):
    audience, *_ = parisians
    connection_ = factories.connect(audience, factories.mailchimp_output())
    # Bob's add is still waiting when he leaves: the row turns into a remove, one newer version.
    bob_add = PendingChange.objects.get(connection=connection_, value="bob@x.com")
    assert (bob_add.action, bob_add.version) == ("add", 1)

    change_criteria(audience, {"and": [PARIS]})
    recompute_audience(audience.pk, now=T0 + timedelta(hours=1))

    bob = PendingChange.objects.get(connection=connection_, value="bob@x.com")
    assert (bob.pk, bob.action, bob.version) == (bob_add.pk, "remove", 2)
    assert PendingChange.objects.get(connection=connection_, value="ann@x.com").version == 1  # untouched
    assert pending(connection_) == {("ann@x.com", "add"), ("bob@x.com", "remove"), ("cat@x.com", "add")}


def test_sending_connections_are_rung_after_commit_and_others_are_not(
    parisians, rings, django_capture_on_commit_callbacks
):
    audience, *_ = parisians
    sending = factories.connect(audience, factories.mailchimp_output("Sending"))
    paused = factories.connect(audience, factories.mailchimp_output("Paused"), list_id="list2")
    Connection.objects.filter(pk=paused.pk).update(status=Connection.Status.PAUSED)
    ending = factories.connect(audience, factories.mailchimp_output("Ending"), list_id="list3")
    Connection.objects.filter(pk=ending.pk).update(status=Connection.Status.ENDING)
    PendingChange.objects.all().delete()
    rings.clear()

    change_criteria(audience, {"and": [PARIS]})
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        recompute_audience(audience.pk, now=T0 + timedelta(hours=1))
    assert rings == []  # nothing before the commit
    for callback in callbacks:
        callback()

    # (Rung once per kind of change at most; a duplicate ring is harmless.)
    assert {args for name, args, _ in rings if name == "forwarding.tasks.deliver_connection"} == {(sending.pk,)}
    # A paused connection keeps its outbox so resuming catches up; an ending one gets nothing.
    assert pending(paused) == {("cat@x.com", "add"), ("bob@x.com", "remove")}
    assert pending(ending) == set()


def test_audiences_referring_to_a_recomputed_audience_are_queued_after_commit(
    parisians, rings, django_capture_on_commit_callbacks
):
    audience, *_ = parisians
    fans = make_audience({"audience": audience.pk, "operator": "member"}, name="Fans", criteria_version=3)
    make_audience({"audience": audience.pk, "operator": "not_member"}, name="Others", status="draft")
    make_audience({"and": [PARIS]}, name="Unrelated")
    rings.clear()

    change_criteria(audience, {"and": [PARIS]})
    with django_capture_on_commit_callbacks(execute=True):
        recompute_audience(audience.pk, now=T0 + timedelta(hours=1))
    assert [args for name, args, _ in rings if name == "audiences.tasks.recompute_audience"] == [(fans.pk, 3)]

    # Nothing changed, nothing to tell the dependants.
    rings.clear()
    with django_capture_on_commit_callbacks(execute=True):
        recompute_audience(audience.pk, now=T0 + timedelta(hours=2))
    assert rings == []


def test_a_user_leaves_when_the_qualifying_event_ages_past_30_days(rings):
    audience = make_audience({"and": [WATCHED_PARIS, PREMIUM]}, depends_on_time=True)
    make_audience({"and": [WATCHED_PARIS]}, name="Not time-based, by its flag")
    ann = make_profile("ann@x.com", status="Premium")
    bob = make_profile("bob@x.com", status="Premium")
    for profile, at in ((ann, T0), (bob, T0 + timedelta(days=20))):
        Event.objects.create(
            profile=profile,
            event_type="custom_event",
            name="Destination Intro",
            attributes={"city": "PARIS"},
            timestamp=at,
            received_at=at,
        )
    assert recompute_audience(audience.pk, now=T0 + timedelta(days=20, hours=1)).entered == 2
    connection_ = factories.connect(audience, factories.mailchimp_output())
    PendingChange.objects.all().delete()

    summary = recompute_time_based_audiences(now=T0 + timedelta(days=31))

    assert (summary["audiences"], summary["entered"], summary["left"], summary["failed"]) == (1, 0, 1, [])
    assert members(audience) == {"bob@x.com"}
    assert pending(connection_) == {("ann@x.com", "remove")}
    assert ("ann@x.com", "left", "time passed") in change_log(audience)
    # 30 days after Bob's event he goes too.
    assert recompute_time_based_audiences(now=T0 + timedelta(days=50, minutes=1))["left"] == 1
    assert members(audience) == set()


def test_the_task_recomputes_and_returns_counts(parisians):
    from audiences.tasks import recompute_audience as task

    audience, *_ = parisians
    change_criteria(audience, {"and": [PARIS]})
    result = task.run(audience.pk, audience.criteria_version)
    assert (result["entered"], result["left"], result["size"], result["skipped"]) == (1, 1, 2, 0)
    assert services.audience_recompute(audience_id=audience.pk) == {"entered": 0, "left": 0, "skipped": 0}


def test_periodic_tasks_are_registered_under_the_scheduled_names():
    import audiences.tasks  # noqa: F401  (registers the tasks)

    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    names = {"audiences.tasks.recompute_time_based_audiences", "audiences.tasks.purge_expired_events"}
    assert names <= scheduled
    assert names | {"audiences.tasks.recompute_audience"} <= set(celery_app.tasks)


# --- the PostgreSQL path ----------------------------------------------------------------------


def test_on_postgresql_no_profile_passes_through_python(parisians, monkeypatch):
    if connection.vendor != "postgresql":
        service_missing("the set-based recompute needs PostgreSQL")
    audience, *_ = parisians

    def refuse(*args, **kwargs):
        raise AssertionError("per-profile work on the PostgreSQL path")

    monkeypatch.setattr("audiences.membership.recompute.apply_membership_deltas", refuse)
    monkeypatch.setattr("audiences.membership.recompute._recompute_by_profile", refuse)
    connection_ = factories.connect(audience, factories.mailchimp_output())
    PendingChange.objects.all().delete()
    change_criteria(audience, {"and": [PARIS]})

    result = recompute_audience(audience.pk, now=T0 + timedelta(hours=1))

    assert (result.entered, result.left) == (1, 1)
    assert pending(connection_) == {("cat@x.com", "add"), ("bob@x.com", "remove")}


def test_two_recomputes_inside_one_outer_transaction(parisians):
    if connection.vendor != "postgresql":
        service_missing("the temporary tables are PostgreSQL's")
    audience, *_ = parisians
    with transaction.atomic():
        change_criteria(audience, {"and": [PARIS]})
        assert recompute_audience(audience.pk).entered == 1
        assert recompute_audience(audience.pk).entered == 0


@pytest.mark.django_db(transaction=True)
def test_a_recompute_waits_for_a_running_recompute_of_the_same_audience(rings):
    if connection.vendor != "postgresql":
        service_missing("the advisory lock is PostgreSQL's")
    make_profile("ann@x.com", status="Premium")
    audience = make_audience({"and": [PREMIUM]})
    finished: list[float] = []

    def other_recompute():
        try:
            finished.append(time.monotonic())
            recompute_audience(audience.pk)
            finished.append(time.monotonic())
        finally:
            connections.close_all()

    # Hold the audience's lock as a running recompute would.
    with transaction.atomic(), connection.cursor() as cursor:
        lock_audience_for_recompute(audience.pk)
        thread = threading.Thread(target=other_recompute)
        thread.start()
        assert _waits_for_advisory_lock(cursor), "the second recompute did not queue on the lock"
        assert len(finished) == 1, "the second recompute did not wait"
        released = time.monotonic()
    thread.join(10)
    assert len(finished) == 2 and finished[1] >= released
    assert members(audience) == {"ann@x.com"}


@pytest.mark.django_db(transaction=True)
def test_real_time_evaluation_waits_while_a_recompute_applies_its_difference(rings):
    """Without the lock, a recompute whose member set was computed before a real-time entry commits
    would remove that fresh member again (seen as a flaky end-to-end test before the fix)."""
    if connection.vendor != "postgresql":
        service_missing("the advisory lock is PostgreSQL's")
    audience = make_audience({"and": [PREMIUM]})
    done: list[float] = []

    def real_time_entry():
        try:
            profiles.profile_upsert(
                identities=[{"type": "email", "value": "bea@x.com"}], attributes={"status": "Premium"}
            )
            done.append(time.monotonic())
        finally:
            connections.close_all()

    with transaction.atomic(), connection.cursor() as cursor:
        lock_audience_for_recompute(audience.pk)  # a recompute is applying its difference
        thread = threading.Thread(target=real_time_entry)
        thread.start()
        assert _waits_for_advisory_lock(cursor), "real-time evaluation did not wait for the recompute"
        assert not done
        released = time.monotonic()
    thread.join(10)
    assert done and done[0] >= released
    assert members(audience) == {"bea@x.com"}


def _waits_for_advisory_lock(cursor, timeout: float = 10) -> bool:
    """True once another session waits for an advisory lock (polling pg_locks, not a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        if cursor.fetchone()[0]:
            return True
        time.sleep(0.02)
    return False


# --- a failing recompute is recorded and backed off (issue 8, item 4) ---------------------------

FAR_FUTURE = {"attribute": "valid_until", "operator": "date_after", "value": "9999-12-31"}


def overdue(audience: Audience) -> None:
    """As if written well before the sweeper's grace period and never calculated since."""
    Audience.objects.filter(pk=audience.pk).update(updated_at=timezone.now() - timedelta(hours=1))


def test_a_failing_recompute_is_recorded_on_the_audience_and_backed_off_by_the_sweeper(rings):
    if connection.vendor != "postgresql":  # SQLite's evaluation, in Python, takes the year 9999 in its stride
        service_missing("the recompute that fails on a far-future date is PostgreSQL's")
    # Criteria stored around validation (it refuses them now): the recompute cannot compute their bounds.
    broken = make_audience(FAR_FUTURE, name="Valid forever")
    overdue(broken)
    assert sweeper.sweep()["recomputing"] == 1  # never calculated: rung

    for failures, backoff in ((1, timedelta(minutes=1)), (2, timedelta(minutes=2)), (3, timedelta(minutes=4))):
        before = timezone.now()
        with pytest.raises(ValueError, match="9999-12-31"):
            recompute_audience(broken.pk)
        broken.refresh_from_db()
        assert "9999-12-31" in broken.recompute_error and broken.recompute_failures == failures
        assert before <= broken.recompute_failed_at <= timezone.now()
        assert broken.recompute_retry_at == broken.recompute_failed_at + backoff
        assert broken.last_calculated_at is None

    # Backing off: the sweeper leaves it alone (before, it was re-queued on every sweep), and so does
    # the periodic recompute of time-based audiences.
    rings.clear()
    assert sweeper.sweep()["recomputing"] == 0 and rings == []
    Audience.objects.filter(pk=broken.pk).update(depends_on_time=True)
    assert recompute_time_based_audiences()["failed"] == []
    # Once the next try is due, the sweeper rings it again.
    Audience.objects.filter(pk=broken.pk).update(recompute_retry_at=timezone.now() - timedelta(seconds=1))
    assert sweeper.sweep()["recomputing"] == 1

    # New criteria start afresh, and a successful recompute leaves no failure behind.
    services.audience_update(audience=broken, criteria=PREMIUM)
    broken.refresh_from_db()
    assert (broken.recompute_error, broken.recompute_failures, broken.recompute_retry_at) == ("", 0, None)
    Audience.objects.filter(pk=broken.pk).update(recompute_failures=2, recompute_error="old")
    recompute_audience(broken.pk)
    broken.refresh_from_db()
    assert (broken.recompute_error, broken.recompute_failures, broken.recompute_failed_at) == ("", 0, None)


def test_the_backoff_doubles_up_to_its_cap():
    assert [recompute_backoff(n) for n in (1, 2, 3, 4)] == [timedelta(minutes=m) for m in (1, 2, 4, 8)]
    assert recompute_backoff(10) == timedelta(hours=6) == recompute_backoff(10_000)
