"""The Events API never waits for a recompute: an audience whose membership lock is held (a recompute
mid-write, a connect) is left out of the request's evaluation and evaluated once the lock is free
(audiences/membership/deferred.py). Real concurrent transactions on PostgreSQL: the advisory locks are its."""

from __future__ import annotations

import base64
import threading
from datetime import timedelta

import pytest
from django.db import connection, connections, transaction
from django.test import Client
from django.utils import timezone

from audiences import services as audience_services
from audiences.inputs import input_create
from audiences.membership import deferred
from audiences.membership.deferred import DEFERRED_TASK, defer_evaluations, evaluate_deferred
from audiences.membership.locks import lock_audience_membership
from audiences.membership.recompute import recompute_audience
from audiences.models import AudienceMembership, DeferredEvaluation, Identity, MembershipChange, Profile
from forwarding import sweeper
from forwarding.models import PendingChange
from tests import factories
from tests.conftest import service_missing

pytestmark = pytest.mark.django_db(transaction=True)

PREMIUM = {"attribute": "status", "operator": "equals", "value": "Premium"}
PARIS = {"attribute": "favourite_city", "operator": "equals", "value": "Paris"}


@pytest.fixture(autouse=True)
def postgresql_only():
    if connection.vendor != "postgresql":
        service_missing("the advisory locks are PostgreSQL's (SQLite serialises writers)")


def emails(audience) -> set[str]:
    ids = AudienceMembership.objects.filter(audience=audience).values_list("profile_id", flat=True)
    return set(Identity.objects.filter(profile_id__in=ids, type="email").values_list("value", flat=True))


def written(email: str, **attributes) -> Profile:
    """A profile written directly (no evaluation): only the recompute moves it."""
    profile = Profile.objects.create(attributes=attributes)
    Identity.objects.create(profile=profile, type="email", value=email)
    return profile


def in_another_transaction(function, timeout: float = 10) -> list:
    """function() in another thread (its own connection); [its result], or [] if it did not finish."""
    results: list = []

    def run() -> None:
        try:
            results.append(function())
        finally:
            connections.close_all()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return results


def post_in_another_transaction(batch: dict, auth: dict, timeout: float = 10) -> list:
    """POST /v2/events from another thread (its own connection and transaction); [status] if the request
    finished within `timeout`, [] if it is still waiting."""
    return in_another_transaction(
        lambda: Client().post("/v2/events", batch, content_type="application/json", **auth).status_code, timeout
    )


@pytest.fixture
def auth() -> dict:
    instance, secret = input_create("backend")
    return {"HTTP_AUTHORIZATION": "Basic " + base64.b64encode(f"{instance.key}:{secret}".encode()).decode()}


def test_an_event_is_evaluated_while_another_audiences_recompute_is_mid_write(auth, rings):
    premium = audience_services.audience_create(name="Premium", criteria=PREMIUM, status="active")
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    written("old@x.com", favourite_city="Paris")
    batch = {
        "environment": "production",
        "user_identities": {"email": "ana@x.com"},
        "user_attributes": {"status": "Premium", "favourite_city": "Paris"},
    }

    with transaction.atomic():
        # The recompute of Parisians has written its difference and not committed: it holds the lock.
        assert recompute_audience(parisians.pk).entered == 1
        answers = post_in_another_transaction(batch, auth)
        assert answers == [202], "the Events API request waited for another audience's recompute"
        # Committed while the recompute is still open: Premium evaluated, Parisians left for later.
        assert emails(premium) == {"ana@x.com"}
        deferred = list(DeferredEvaluation.objects.values_list("profile__identities__value", "audience_ids"))
        assert deferred == [("ana@x.com", [parisians.pk])]
    assert emails(parisians) == {"old@x.com"}  # the recompute's snapshot did not hold ana

    # Rung by the recompute as it commits; not by the request, which committed while the lock was held.
    assert sum(name == DEFERRED_TASK for name, _, _ in rings) == 1
    assert evaluate_deferred() == 1
    assert emails(parisians) == {"old@x.com", "ana@x.com"}
    assert not DeferredEvaluation.objects.exists()
    reasons = set(MembershipChange.objects.filter(audience=parisians).values_list("reason", flat=True))
    assert reasons == {"recomputed", "events api"}


def test_a_deferred_evaluation_waits_while_the_lock_is_held_and_sends_a_stayers_new_identity(auth, rings):
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    bea = written("bea@x.com", favourite_city="Paris")
    Identity.objects.create(profile=bea, type="customer", value="c-bea")
    recompute_audience(parisians.pk)
    connection_ = factories.connect(parisians, factories.mailchimp_output())
    PendingChange.objects.all().delete()
    # Bea, a member who stays, gains a second email.
    batch = {
        "environment": "production",
        "user_identities": {"customer_id": "c-bea", "email": "bea.work@x.com"},
        "user_attributes": {"favourite_city": "Paris"},
    }

    def queued() -> set[tuple[str, str]]:
        return set(PendingChange.objects.filter(connection=connection_).values_list("value", "action"))

    with transaction.atomic():
        recompute_audience(parisians.pk)  # holds the lock, changes nothing
        assert post_in_another_transaction(batch, auth) == [202]
        assert DeferredEvaluation.objects.count() == 1
        assert queued() == set()  # not published to a connection whose audience is being rewritten
        # Still held (a worker's own connection, not the recompute's): nothing evaluated, nothing lost.
        assert in_another_transaction(evaluate_deferred) == [0]
        assert DeferredEvaluation.objects.count() == 1
    assert evaluate_deferred() == 1
    assert emails(parisians) == {"bea@x.com", "bea.work@x.com"}
    assert not DeferredEvaluation.objects.exists()
    # The identity the request added reaches the connection, as it would have without the recompute.
    assert queued() == {("bea.work@x.com", "add")}


def test_the_sweeper_rings_for_deferred_evaluations_left_waiting(rings):
    """A lost ring (broker down when the request or the recompute committed) delays, never loses."""
    bea = written("bea@x.com", favourite_city="Paris")
    row = DeferredEvaluation.objects.create(
        profile=bea, audience_ids=[1], reason="events api", deferred_at=timezone.now()
    )
    assert sweeper.sweep()["deferred_evaluations"] == 0  # fresh: its own ring is on the way
    DeferredEvaluation.objects.filter(pk=row.pk).update(deferred_at=timezone.now() - timedelta(minutes=1))
    assert sweeper.sweep()["deferred_evaluations"] == 1
    assert [name for name, _, _ in rings] == [DEFERRED_TASK]


def test_an_audience_referring_to_one_being_recomputed_is_deferred_with_it(auth, rings):
    """It would read a membership the recompute is rewriting: evaluated with it, after the recompute."""
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    fans = audience_services.audience_create(
        name="Parisian fans", criteria={"audience": parisians.pk, "operator": "member"}, status="active"
    )
    premium = audience_services.audience_create(name="Premium", criteria=PREMIUM, status="active")
    batch = {
        "environment": "production",
        "user_identities": {"email": "ana@x.com"},
        "user_attributes": {"status": "Premium", "favourite_city": "Paris"},
    }

    with transaction.atomic():
        recompute_audience(parisians.pk)
        assert post_in_another_transaction(batch, auth) == [202]
        assert emails(premium) == {"ana@x.com"}
        assert emails(fans) == set()
        assert list(DeferredEvaluation.objects.values_list("audience_ids", flat=True)) == [
            sorted([parisians.pk, fans.pk])
        ]
    assert evaluate_deferred() == 1
    assert emails(parisians) == emails(fans) == {"ana@x.com"}


def test_rows_waiting_for_a_held_audience_are_left_untouched_and_the_others_evaluated(rings):
    """A ring during a recompute (every deferring request rings) evaluates what it can and does not take
    the rows still waiting for the held audience only to write them again: that made each ring evaluate
    and rewrite the whole backlog, occupying the workers that deliver real-time changes."""
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    premium = audience_services.audience_create(name="Premium", criteria=PREMIUM, status="active")
    ana = written("ana@x.com", favourite_city="Paris", status="Free")
    bea = written("bea@x.com", favourite_city="Paris", status="Premium")
    now = timezone.now()
    waiting = DeferredEvaluation.objects.create(
        profile=ana, audience_ids=[parisians.pk], reason="events api", deferred_at=now
    )
    DeferredEvaluation.objects.create(profile=bea, audience_ids=[premium.pk], reason="events api", deferred_at=now)

    with transaction.atomic():
        recompute_audience(parisians.pk)  # holds Parisians' lock
        assert in_another_transaction(evaluate_deferred) == [1]  # Bea's row: Premium is free
        assert emails(premium) == {"bea@x.com"}
        # Ana's row is the same row, not taken and written again.
        assert list(DeferredEvaluation.objects.values_list("pk", flat=True)) == [waiting.pk]
    assert evaluate_deferred() == 1
    assert emails(parisians) == {"ana@x.com", "bea@x.com"}
    assert not DeferredEvaluation.objects.exists()


def test_a_deferring_request_rings_only_once_the_lock_is_free(rings):
    """While the lock is held the holder rings as it commits (and then sees the request's rows), so a ring
    of the request would only find them waiting: during a recompute every request would ring for nothing."""
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    ana = written("ana@x.com", favourite_city="Paris")
    locked, release = threading.Event(), threading.Event()

    def recompute_holding_the_lock() -> None:
        try:
            with transaction.atomic():
                lock_audience_membership(parisians.pk)
                locked.set()
                release.wait(10)
        finally:
            connections.close_all()

    holder = threading.Thread(target=recompute_holding_the_lock, daemon=True)
    holder.start()
    assert locked.wait(10)
    with transaction.atomic():
        defer_evaluations([ana.pk], audience_ids=[parisians.pk], reason="events api")
    assert [name for name, _, _ in rings if name == DEFERRED_TASK] == []  # committed while held
    release.set()
    holder.join(10)
    with transaction.atomic():
        defer_evaluations([ana.pk], audience_ids=[parisians.pk], reason="events api")
    assert [name for name, _, _ in rings if name == DEFERRED_TASK] == [DEFERRED_TASK]  # after the holder: rung
    # The check kept no lock of its own: a recompute takes the audience's lock at once.
    assert len(in_another_transaction(lambda: recompute_audience(parisians.pk), timeout=5)) == 1


def test_one_run_of_the_deferred_evaluations_at_a_time(rings):
    """A second ring while a run works returns at once: the backlog a recompute leaves behind takes one of
    the worker's slots, not both, and the real-time deliveries keep the other."""
    parisians = audience_services.audience_create(name="Parisians", criteria=PARIS, status="active")
    ana = written("ana@x.com", favourite_city="Paris")
    DeferredEvaluation.objects.create(
        profile=ana, audience_ids=[parisians.pk], reason="events api", deferred_at=timezone.now()
    )
    running, release = threading.Event(), threading.Event()

    def a_run_at_work() -> None:
        try:
            assert deferred._runner_lock(take=True)
            running.set()
            release.wait(10)
            deferred._runner_lock(take=False)
        finally:
            connections.close_all()

    other = threading.Thread(target=a_run_at_work, daemon=True)
    other.start()
    assert running.wait(10)
    assert evaluate_deferred() == 0
    assert DeferredEvaluation.objects.count() == 1  # left to the run at work
    release.set()
    other.join(10)
    assert evaluate_deferred() == 1
    assert emails(parisians) == {"ana@x.com"}
