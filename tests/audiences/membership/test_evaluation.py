"""Real-time evaluation (audiences.membership.evaluation): facts loaded set-wise, audiences in dependency order,
deltas written to the membership, the change log and the forwarding outbox."""

import base64
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection as db
from django.db import connections, transaction
from django.test.utils import CaptureQueriesContext

from audiences import profiles
from audiences import services as audience_services
from audiences.inputs import input_create
from audiences.membership import evaluation
from audiences.models import Audience, AudienceMembership, Event, Identity, MembershipChange, Profile
from forwarding.models import PendingChange
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 3, 15, 12, 0, tzinfo=UTC)
PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}
INTRO = {
    "event": "Destination Intro",
    "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
}


def audience(name, criteria, status="active"):
    return audience_services.audience_create(name=name, criteria=criteria, status=status)


def profile(email=None, **attributes):
    """A profile written directly (no evaluation), as the Events API finds it before evaluating."""
    created = Profile.objects.create(attributes=attributes)
    if email:
        Identity.objects.create(profile=created, type="email", value=email)
    return created


def add_event(who, name="Destination Intro", at=NOW - timedelta(days=1), **attributes):
    Event.objects.create(
        profile=who, event_type="custom_event", name=name, attributes=attributes, timestamp=at, received_at=at
    )


def members(of):
    return set(AudienceMembership.objects.filter(audience=of).values_list("profile_id", flat=True))


def test_load_facts_reads_attributes_identities_events_in_the_window_and_memberships(django_assert_num_queries):
    ana = profile("ana@x.com", status="Premium")
    Identity.objects.create(profile=ana, type="customer", value="c-1")
    add_event(ana, city="Paris")
    add_event(ana, name="Old", at=NOW - timedelta(days=40))
    premium = audience("Premium", PREMIUM)
    AudienceMembership.objects.create(audience=premium, profile=ana, entered_at=NOW)
    bob = profile()

    with django_assert_num_queries(4):
        facts = evaluation.load_facts([ana.pk, bob.pk, 999999], now=NOW, events_since=NOW - timedelta(days=30))

    assert set(facts) == {ana.pk, bob.pk}  # a profile that does not exist is left out
    assert facts[ana.pk].attributes == {"status": "Premium"}
    assert sorted(facts[ana.pk].identities) == [("customer", "c-1"), ("email", "ana@x.com")]
    assert [(e.name, dict(e.attributes)) for e in facts[ana.pk].events] == [("destination intro", {"city": "Paris"})]
    assert facts[ana.pk].memberships == {premium.pk}
    assert (facts[bob.pk].identities, facts[bob.pk].events, facts[bob.pk].memberships) == ([], [], set())

    with django_assert_num_queries(3):  # no event window: the events are not read
        facts = evaluation.load_facts([ana.pk], now=NOW, events_since=None)
    assert facts[ana.pk].events == []


def test_entering_and_leaving_write_membership_change_log_and_pending_changes(rings):
    premium = audience("Premium", PREMIUM)
    connection = factories.connect(premium, factories.mailchimp_output())
    ana = profile("ana@x.com", status="Premium")
    bob = profile("bob@x.com", status="Free")

    changes = evaluation.evaluate_profiles([ana.pk, bob.pk], now=NOW, reason="events batch")

    assert changes == {ana.pk: ([premium.pk], [])}
    assert members(premium) == {ana.pk}
    change = MembershipChange.objects.get()
    assert (change.profile_id, change.kind, change.reason, change.at) == (ana.pk, "entered", "events batch", NOW)
    assert list(PendingChange.objects.values_list("connection_id", "value", "action")) == [
        (connection.pk, "ana@x.com", "add")
    ]

    Profile.objects.filter(pk=ana.pk).update(attributes={"status": "Free"})
    changes = evaluation.evaluate_profiles([ana.pk, bob.pk], now=NOW + timedelta(minutes=1), reason="events batch")

    assert changes == {ana.pk: ([], [premium.pk])}
    assert members(premium) == set()
    assert MembershipChange.objects.filter(kind="left", profile=ana).count() == 1
    assert list(PendingChange.objects.values_list("value", "action")) == [("ana@x.com", "remove")]
    # Nothing changed: nothing is written again.
    assert evaluation.evaluate_profiles([ana.pk, bob.pk], now=NOW, reason="again") == {}
    assert MembershipChange.objects.count() == 2


def test_only_active_audiences_are_evaluated():
    audience("Draft", PREMIUM, status="draft")
    ana = profile(status="Premium")
    assert evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x") == {}
    assert not AudienceMembership.objects.exists()


def test_referenced_audiences_are_evaluated_first():
    # The dependent is created first (lower id), so id order alone would evaluate it on stale membership.
    dependent = audience("Premium Parisians", {"and": []}, status="draft")
    premium = audience("Premium", PREMIUM)
    audience_services.audience_update(
        audience=dependent,
        criteria={"and": [{"audience": premium.pk, "operator": "member"}, {"event": "Destination Intro"}]},
        status="active",
    )
    not_premium = audience("Not premium", {"audience": premium.pk, "operator": "not_member"})
    ana = profile(status="Premium")
    add_event(ana)

    changes = evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x")

    assert sorted(changes[ana.pk][0]) == sorted([premium.pk, dependent.pk])
    assert members(dependent) == {ana.pk} and members(not_premium) == set()

    Profile.objects.filter(pk=ana.pk).update(attributes={})
    changes = evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x")

    assert changes == {ana.pk: ([not_premium.pk], [premium.pk, dependent.pk])}
    assert members(not_premium) == {ana.pk}


def test_dependency_order_puts_referenced_audiences_first_and_survives_a_cycle():
    def compiled(pk, *refs):
        tree = {"and": [{"audience": r, "operator": "member"} for r in refs]}
        return evaluation._compile(pk, 1, tree)

    ordered = evaluation.dependency_order([compiled(1, 3), compiled(2), compiled(3, 2, 99)])
    assert [a.id for a in ordered] == [2, 3, 1]  # 99 is not active: read from stored membership
    ordered = evaluation.dependency_order([compiled(5, 6), compiled(6, 5), compiled(7)])
    assert sorted(a.id for a in ordered) == [5, 6, 7]


def test_events_count_only_inside_the_window_and_membership_follows_the_clock():
    parisians = audience(
        "Potential Parisians", {"and": [INTRO, PREMIUM]}
    )  # default recency: more than 0 in the last 30 days
    ana = profile(status="Premium")
    add_event(ana, city="paris", at=NOW - timedelta(days=29))
    add_event(ana, city="Rome", at=NOW - timedelta(days=1))
    bob = profile(status="Premium")
    add_event(bob, city="Paris", at=NOW - timedelta(days=31))
    carl = profile(status="Premium")
    add_event(carl, city="Paris", at=NOW - timedelta(days=30))  # the window's first instant counts

    assert evaluation.evaluate_profiles([ana.pk, bob.pk, carl.pk], now=NOW, reason="x") == {
        ana.pk: ([parisians.pk], []),
        carl.pk: ([parisians.pk], []),
    }

    later = NOW + timedelta(days=1, seconds=1)
    assert evaluation.evaluate_profiles([ana.pk, bob.pk], now=later, reason="x") == {ana.pk: ([], [parisians.pk])}


def test_the_events_read_reach_back_to_the_earliest_window_of_all_audiences():
    """One evaluation reads events once for every audience: from the earliest start of their windows, so an
    audience looking 40 days back still sees an event a 7-day audience beside it does not."""
    recent = audience(
        "Recent", {"event": "Destination Intro", "recency": {"within_last": {"amount": 7, "unit": "days"}}}
    )
    long_ago = audience(
        "Long ago", {"event": "Destination Intro", "recency": {"within_last": {"amount": 40, "unit": "days"}}}
    )
    ana = profile()
    add_event(ana, at=NOW - timedelta(days=20))
    bob = profile()
    add_event(bob, at=NOW - timedelta(days=2))

    assert evaluation.evaluate_profiles([ana.pk, bob.pk], now=NOW, reason="x") == {
        ana.pk: ([long_ago.pk], []),
        bob.pk: (sorted([recent.pk, long_ago.pk]), []),
    }


def test_frequency_counts_events_in_the_window():
    twice = audience(
        "Twice",
        {
            "event": "login",
            "frequency": {"operator": "at_least", "count": 2},
            "recency": {"within_last": {"amount": 2, "unit": "hours"}},
        },
    )
    ana = profile()
    add_event(ana, name="LOGIN", at=NOW - timedelta(hours=1))
    add_event(ana, name="login", at=NOW - timedelta(hours=3))
    assert evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x") == {}
    add_event(ana, name="Login", at=NOW)
    assert evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x") == {ana.pk: ([twice.pk], [])}


def test_queries_do_not_grow_with_the_number_of_profiles(django_assert_max_num_queries, rings):
    audiences = [
        audience(f"Premium {n}", {"and": [PREMIUM, {"attribute": "n", "operator": "greater_or_equal", "value": n}]})
        for n in range(9)
    ]
    audiences.append(audience("Events", {"and": [INTRO]}))
    output = factories.mailchimp_output()
    for each in audiences:
        factories.connect(each, output, list_id=f"list-{each.pk}")
    profiles = [profile(f"p{i}@x.com", status="Premium", n=i % 12) for i in range(60)]
    for who in profiles[::2]:
        add_event(who, city="Paris")
    ids = [p.pk for p in profiles]

    # All audiences' changes are written together (apply_membership_deltas): the shared locks, the
    # reads, then membership inserts and deletes, the change log, and the planner's three statements.
    with django_assert_max_num_queries(12):
        changes = evaluation.evaluate_profiles(ids, now=NOW, reason="x")
    assert len(changes) == 60
    assert len(members(audiences[-1])) == 30
    assert len(members(audiences[3])) == sum(1 for i in range(60) if i % 12 >= 3)

    with django_assert_max_num_queries(6):  # nothing changes: the shared locks, then reads only
        assert evaluation.evaluate_profiles(ids, now=NOW, reason="x") == {}


def test_no_event_query_without_an_event_condition():
    audience("Premium", PREMIUM)
    ana = profile(status="Premium")
    with CaptureQueriesContext(db) as queries:
        evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x")
    assert not [q for q in queries.captured_queries if Event._meta.db_table in q["sql"]]


def test_compiled_criteria_follow_a_criteria_change():
    premium = audience("Premium", PREMIUM)
    ana = profile(status="Gold")
    assert evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x") == {}
    audience_services.audience_update(
        audience=premium, criteria={"attribute": "status", "operator": "equals", "value": "Gold"}
    )
    assert evaluation.evaluate_profiles([ana.pk], now=NOW, reason="x") == {ana.pk: ([premium.pk], [])}


# --- through the services -------------------------------------------------------------------


def test_profile_upsert_evaluates_and_reports_entered_and_left(rings):
    premium = audience("Premium", PREMIUM)
    result = profiles.profile_upsert(
        identities=[{"type": "email", "value": "ana@x.com"}], attributes={"Status": "premium"}
    )
    assert (result.entered, result.left) == ([premium.pk], [])
    result = profiles.profile_upsert(
        identities=[{"type": "email", "value": "ana@x.com"}], attributes={"status": "Free"}
    )
    assert (result.entered, result.left) == ([], [premium.pk])
    assert list(MembershipChange.objects.order_by("id").values_list("kind", "reason")) == [
        ("entered", "profile update"),
        ("left", "profile update"),
    ]


def test_a_member_who_stays_gets_new_identities_queued(rings):
    premium = audience("Premium", PREMIUM)
    connection = factories.connect(premium, factories.mailchimp_output())
    profiles.profile_upsert(identities=[{"type": "customer", "value": "c-1"}], attributes={"status": "Premium"})
    assert not PendingChange.objects.exists()
    result = profiles.profile_upsert(
        identities=[{"type": "customer", "value": "c-1"}, {"type": "email", "value": "ana@x.com"}]
    )
    assert (result.entered, result.left) == ([], [])
    assert list(PendingChange.objects.values_list("connection_id", "value", "action")) == [
        (connection.pk, "ana@x.com", "add")
    ]


def test_depends_on_time_is_kept_with_the_criteria():
    timed = audience("Timed", {"event": "login"}, status="draft")
    assert timed.depends_on_time
    timed = audience_services.audience_update(audience=timed, criteria=PREMIUM)
    assert not Audience.objects.get(pk=timed.pk).depends_on_time
    timed = audience_services.audience_update(
        audience=timed,
        criteria={"attribute": "seen", "operator": "within_last", "value": {"amount": 1, "unit": "days"}},
    )
    assert Audience.objects.get(pk=timed.pk).depends_on_time


def test_audience_references_must_exist_and_form_no_cycle():
    with pytest.raises(ValidationError) as excinfo:
        audience("Ghost", {"and": [{"audience": 4242, "operator": "member"}]})
    assert excinfo.value.message_dict["criteria"] == ["criteria.and[0].audience: audience 4242 does not exist"]

    first = audience("First", PREMIUM)
    second = audience("Second", {"audience": first.pk, "operator": "member"})
    third = audience("Third", {"or": [{"audience": second.pk, "operator": "not_member"}]})
    with pytest.raises(ValidationError) as excinfo:
        audience_services.audience_update(
            audience=first, criteria={"and": [{"audience": third.pk, "operator": "member"}]}
        )
    assert excinfo.value.message_dict["criteria"] == [
        f"criteria.and[0].audience: audience {third.pk} refers back to this one"
    ]
    with pytest.raises(ValidationError) as excinfo:
        audience_services.audience_update(audience=first, criteria={"audience": first.pk, "operator": "member"})
    assert excinfo.value.message_dict["criteria"][0].startswith("criteria.audience: ")
    assert Audience.objects.get(pk=first.pk).criteria == PREMIUM


# --- concurrency (PostgreSQL) ---------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_two_evaluations_of_one_profile_at_once_enter_it_once():
    if db.vendor != "postgresql":
        service_missing("row locks are PostgreSQL's (SQLite serialises writers)")
    premium = audience("Premium", PREMIUM)
    ana = profile(status="Premium")
    first_done = threading.Event()
    results: dict[str, object] = {}

    def evaluate(label: str, hold: float) -> None:
        try:
            with transaction.atomic():
                results[label] = evaluation.evaluate_profiles([ana.pk], now=NOW, reason=label)
                first_done.set()
                time.sleep(hold)  # keep the transaction open while the other one tries
        except Exception as exc:  # reported below
            results[label] = exc
        finally:
            connections.close_all()

    first = threading.Thread(target=evaluate, args=("first", 0.5))
    first.start()
    assert first_done.wait(10)
    second = threading.Thread(target=evaluate, args=("second", 0))
    second.start()
    first.join(10)
    second.join(10)

    assert results == {"first": {ana.pk: ([premium.pk], [])}, "second": {}}
    assert members(premium) == {ana.pk}
    assert MembershipChange.objects.count() == 1


# --- one bad audience never stops ingestion (issue 7, item 2) ----------------------------------

# The issue's reproduction, stored as it could be before validation refused it (or written around it).
FAR_FUTURE = {"attribute": "valid_until", "operator": "date_after", "value": "9999-12-31"}


def stored_as_is(name, criteria):
    """An active audience written without validation, as data from before the check was added."""
    return Audience.objects.create(name=name, criteria=criteria, status="active")


def test_the_issues_far_future_audience_is_left_out_and_recorded_while_ingestion_goes_on(client, rings):
    broken = stored_as_is("Valid forever", FAR_FUTURE)
    premium = audience("Premium", PREMIUM)
    instance, secret = input_create("backend")
    auth = {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{instance.key}:{secret}".encode()).decode()}
    batch = {
        "environment": "production",
        "user_identities": {"email": "ana@x.com"},
        "user_attributes": {"status": "Premium"},
    }

    answer = client.post("/v2/events", batch, content_type="application/json", **auth)
    assert answer.status_code == 202, answer.content
    bulk = [{**batch, "user_identities": {"email": "bob@x.com"}}, {**batch, "user_identities": {"email": "cat@x.com"}}]
    answer = client.post("/v2/bulkevents", bulk, content_type="application/json", **auth)
    assert answer.status_code == 202, answer.content
    result = profiles.profile_upsert(
        identities=[{"type": "email", "value": "dan@x.com"}], attributes={"status": "premium"}
    )

    assert len(members(premium)) == 4 and result.entered == [premium.pk]  # the other audience stays correct
    assert members(broken) == set()
    broken.refresh_from_db()
    assert "9999-12-31" in broken.evaluation_error and broken.evaluation_failed_at is not None
    premium.refresh_from_db()
    assert premium.evaluation_error == ""


def test_a_failure_injected_at_evaluation_stays_with_its_audience(monkeypatch, rings):
    """Any exception while one audience evaluates (not only a date): its members stay as they were, half of
    its profiles are not written, the audiences after it still evaluate."""
    failing = audience("Failing", {"attribute": "status", "operator": "exists"})
    premium = audience("Premium", PREMIUM)
    ana, bob = profile(status="Premium"), profile(status="Premium")
    AudienceMembership.objects.create(audience=failing, profile=ana, entered_at=NOW)
    compile_criteria = evaluation.criteria_lang.compile_criteria

    def compile_with_a_fault(tree):
        predicate = compile_criteria(tree)
        if tree != failing.criteria:
            return predicate
        seen = []

        def faulty(facts, now):
            seen.append(facts.profile_id)
            if len(seen) >= 2:  # from the second profile on: the first one's verdict must not be written
                raise ZeroDivisionError("injected")
            return predicate(facts, now)

        return faulty

    monkeypatch.setattr(evaluation.criteria_lang, "compile_criteria", compile_with_a_fault)
    evaluation._compiled.clear()

    changes = evaluation.evaluate_profiles([ana.pk, bob.pk], now=NOW, reason="x")

    assert changes == {ana.pk: ([premium.pk], []), bob.pk: ([premium.pk], [])}
    assert members(failing) == {ana.pk} and members(premium) == {ana.pk, bob.pk}
    failing.refresh_from_db()
    assert (failing.evaluation_error, failing.evaluation_failed_at) == ("ZeroDivisionError: injected", NOW)
    # Recorded at most once a minute: every request meets the same failure.
    with CaptureQueriesContext(db) as queries:
        evaluation.evaluate_profiles([ana.pk], now=NOW + timedelta(seconds=10), reason="x")
    updates = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("UPDATE")]
    assert len(updates) == 1  # the statement runs, and its WHERE leaves the fresh record alone
    failing.refresh_from_db()
    assert failing.evaluation_failed_at == NOW

    # New criteria clear the record.
    monkeypatch.setattr(evaluation.criteria_lang, "compile_criteria", compile_criteria)
    audience_services.audience_update(audience=failing, criteria=PREMIUM)
    failing.refresh_from_db()
    assert (failing.evaluation_error, failing.evaluation_failed_at) == ("", None)
