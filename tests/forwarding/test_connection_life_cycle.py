"""The connection life cycle (issue 11 item 4): editing settings (a new Mailchimp list is backfilled and the old
one cleaned), resync (only the difference with our records), reconcile (the partner's word, drift repaired),
and Mailchimp lists requiring merge fields. Real PostgreSQL, the local Mailchimp server over HTTP; delivery and
the jobs run in this process (tasks are recorded by `rings`, run by hand)."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from audiences import profiles
from connections.models import Connection, ConnectionMember
from forwarding import doorbell, lifecycle, sync
from forwarding.delivery import deliver_connection
from forwarding.models import ConnectionJob, PendingChange, RetiredMember
from forwarding.selectors import connection_stats
from local_partners.mailchimp import LocalMailchimpServer, subscriber_hash
from outputs.partners.mailchimp import Mailchimp
from tests import factories

pytestmark = pytest.mark.django_db(transaction=True)
OLD, NEW = "old", "new"  # the lists of the `server` fixture (tests/forwarding/conftest.py)


@pytest.fixture
def connection(server) -> Connection:
    audience = factories.active_audience()
    for name in ("ann", "bob", "cy"):
        factories.parisian(f"{name}@x.com")
    connection = factories.connect(audience, factories.mailchimp_output(), list_id=OLD)
    deliver_connection(connection_id=connection.pk)
    return connection


def subscribed(server: LocalMailchimpServer, list_id: str) -> set[str]:
    return {m["email_address"] for m in server.members(list_id).values() if m["status"] == "subscribed"}


def leave(email: str) -> None:
    profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"status": "Free"})


def run_jobs(rings) -> None:
    """Run the jobs the services queued, as the worker would."""
    for task, args, _ in list(rings):
        if task == doorbell.OLD_TARGET_CLEANUP_TASK:
            lifecycle.old_target_cleanup_run(job_id=args[0])
        elif task == doorbell.RECONCILE_TASK:
            sync.reconcile_run(job_id=args[0])
    rings.clear()


# --- editing settings ------------------------------------------------------------------------------------


def test_editing_the_list_says_what_it_does_then_backfills_the_new_list_and_cleans_the_old(server, connection, rings):
    assert subscribed(server, OLD) == {"ann@x.com", "bob@x.com", "cy@x.com"}
    leave("cy@x.com")  # a remove waits for the old list, not sent yet

    preview = lifecycle.connection_settings_preview(connection=connection, settings={"list_id": NEW})
    assert (preview.changed, preview.target_changed, preview.backfill, preview.cleanup) == (("list_id",), True, 2, 3)
    described = preview.as_dict()["description"]
    assert "backfilled with 2 identities" in described
    assert "With Delete on Subscription End, the old target's 3 members from this connection are removed" in described
    assert Connection.objects.get(pk=connection.pk).settings == {"list_id": OLD}  # a preview writes nothing

    edit = lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    connection.refresh_from_db()
    assert connection.settings == {"list_id": NEW}
    assert connection.throttled_until is None  # the hold is released with the switch
    # The removal owed to the old list is the clean-up's now; the new list never had cy.
    assert set(PendingChange.objects.values_list("value", "action")) == {("ann@x.com", "add"), ("bob@x.com", "add")}
    assert not ConnectionMember.objects.filter(connection=connection).exists()
    job = ConnectionJob.objects.get(pk=edit.cleanup_job)
    assert (job.kind, job.status, job.total, job.settings) == ("old_target_cleanup", "queued", 3, {"list_id": OLD})

    deliver_connection(connection_id=connection.pk)
    run_jobs(rings)
    assert subscribed(server, NEW) == {"ann@x.com", "bob@x.com"}
    assert server.members(OLD) == {}  # archived: Delete on Subscription End
    job.refresh_from_db()
    assert (job.status, job.done) == ("done", 3)
    assert not RetiredMember.objects.exists()


def test_without_delete_on_subscription_end_the_old_list_keeps_its_members(server, rings):
    audience = factories.active_audience()
    factories.parisian("ann@x.com")
    output = factories.mailchimp_output(delete_on_subscription_end=False)
    connection = factories.connect(audience, output, list_id=OLD)
    deliver_connection(connection_id=connection.pk)

    edit = lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    assert edit.cleanup_job is None and "Delete on Subscription End is off" in edit.as_dict()["description"]
    deliver_connection(connection_id=connection.pk)
    assert subscribed(server, OLD) == subscribed(server, NEW) == {"ann@x.com"}


def test_a_change_made_while_the_list_is_edited_goes_to_the_new_list(server, connection, rings):
    lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    factories.parisian("late@x.com")  # planned after the switch: for the new list only
    deliver_connection(connection_id=connection.pk)
    run_jobs(rings)
    assert "late@x.com" in subscribed(server, NEW)
    assert "late@x.com" not in {m["email_address"] for m in server.members(OLD, include_archived=True).values()}


def test_an_edit_waits_for_the_batch_in_flight_and_holds_delivery_meanwhile(server, connection, monkeypatch):
    # A delivery holds the lease (a batch in flight) for the edit's whole wait: it gives up, says so, and
    # lets deliveries go again.
    from django.utils import timezone

    Connection.objects.filter(pk=connection.pk).update(
        delivery_lease_until=timezone.now() + timezone.timedelta(minutes=5), delivery_lease_holder="someone"
    )
    monkeypatch.setattr(lifecycle, "SWITCH_WAIT_SECONDS", 0.3)
    with pytest.raises(ValidationError) as excinfo:
        lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    assert "settings" in excinfo.value.message_dict
    connection.refresh_from_db()
    assert connection.settings == {"list_id": OLD} and connection.throttled_until is None


def test_an_edit_of_other_settings_just_applies(server, connection):
    # Mailchimp has one connection setting; an unchanged value changes nothing.
    edit = lifecycle.connection_settings_update(connection=connection, settings={"list_id": OLD})
    assert edit.changed == () and edit.sentences == ("Nothing changes.",)
    assert PendingChange.objects.count() == 0


@pytest.mark.parametrize(
    ("values", "field"),
    [({"list_id": "a/b"}, "list_id"), ({"list_id": ""}, "list_id"), ({"colour": "blue"}, "colour")],
)
def test_bad_settings_are_refused_naming_the_setting(server, connection, values, field):
    with pytest.raises(ValidationError) as excinfo:
        lifecycle.connection_settings_update(connection=connection, settings=values)
    assert field in excinfo.value.message_dict


def test_a_list_the_partner_refuses_is_not_switched_to(server, connection):
    preview = lifecycle.connection_settings_preview(connection=connection, settings={"list_id": "missing"})
    assert preview.partner_test[0] is False and "saving is refused" in preview.as_dict()["description"]

    with pytest.raises(ValidationError) as excinfo:
        lifecycle.connection_settings_update(connection=connection, settings={"list_id": "missing"})

    assert "Mailchimp has no list with id 'missing'" in excinfo.value.message_dict["list_id"][0]
    connection.refresh_from_db()
    assert connection.settings == {"list_id": OLD} and not ConnectionJob.objects.exists()


def test_moving_back_to_a_list_still_being_cleaned_is_refused(server, connection, rings):
    lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    with pytest.raises(ValidationError) as excinfo:
        lifecycle.connection_settings_update(connection=connection, settings={"list_id": OLD})
    assert "list_id" in excinfo.value.message_dict


# --- resync ---------------------------------------------------------------------------------------------


def test_resync_plans_only_the_difference_with_our_records(server, connection):
    # Our records drift from the audience: one member's record lost, one non-member recorded as held.
    ConnectionMember.objects.filter(value="ann@x.com").delete()
    ConnectionMember.objects.create(
        connection=connection,
        identity_type="email",
        value="ghost@x.com",
        state="added",
        updated_at="2020-01-01T00:00:00Z",
    )
    ConnectionMember.objects.filter(value="bob@x.com").update(state="rejected")

    result = sync.connection_resync(connection=connection)

    assert result.as_dict() == {"adds_planned": 1, "removes_planned": 1}
    assert set(PendingChange.objects.values_list("value", "action")) == {
        ("ann@x.com", "add"),
        ("ghost@x.com", "remove"),
    }
    # Identities refused for good are sent again only when asked.
    assert sync.connection_resync(connection=connection, include_rejected=True).adds_planned == 1
    assert sync.connection_resync(connection=connection).as_dict() == {"adds_planned": 0, "removes_planned": 0}


def test_resync_of_a_connection_in_sync_plans_nothing(server, connection):
    assert sync.connection_resync(connection=connection).as_dict() == {"adds_planned": 0, "removes_planned": 0}


# --- reconcile -------------------------------------------------------------------------------------------


def drift_by_hand(server: LocalMailchimpServer) -> None:
    """What people do in Mailchimp's own UI, on a list other tools share: archive a member, unsubscribe another,
    subscribe a stranger (another tool's subscriber), subscribe again someone this connection removed."""
    import requests

    session = requests.Session()
    session.auth = ("x", factories.MAILCHIMP_KEY)
    base = f"{server.base_url}/lists/{OLD}"
    assert session.delete(f"{base}/members/{subscriber_hash('ann@x.com')}", timeout=5).status_code == 204
    body = {
        "members": [
            {"email_address": "bob@x.com", "status": "unsubscribed"},
            {"email_address": "stranger@x.com", "status": "subscribed"},
            {"email_address": "dan@x.com", "status": "subscribed"},
        ],
        "update_existing": True,
    }
    assert session.post(base, json=body, timeout=5).json()["error_count"] == 0


def test_reconcile_repairs_drift_made_at_the_partner_and_leaves_what_is_not_ours(
    server, connection, rings, monkeypatch
):
    factories.parisian("dan@x.com")
    deliver_connection(connection_id=connection.pk)
    leave("dan@x.com")
    deliver_connection(connection_id=connection.pk)  # this connection held dan, and removed it
    drift_by_hand(server)
    totals_while_reading = []
    listing = Mailchimp.list_members

    def watched(self, connection_settings, audience):
        for member in listing(self, connection_settings, audience):
            totals_while_reading.append(ConnectionJob.objects.values_list("total", flat=True).get())
            yield member

    monkeypatch.setattr(Mailchimp, "list_members", watched)
    job = sync.connection_reconcile_start(connection=connection)
    assert sync.connection_reconcile_start(connection=connection) == job  # one at a time
    run_jobs(rings)

    job.refresh_from_db()
    assert job.status == "done" and (job.done, job.total) == (4, 4)
    assert set(totals_while_reading) == {4}  # x of N from the first member read
    assert job.result == {
        "read": 4,  # cy, bob (unsubscribed), stranger, dan; ann is archived
        "adds_planned": 2,  # ann, bob
        "removes_planned": 1,  # dan: ours, no member any more
        "not_ours": 1,  # stranger: never added by this connection, left alone
        "marked_held": 1,  # dan
        "marked_not_held": 2,  # ann, bob
    }
    members = dict(ConnectionMember.objects.values_list("value", "state"))
    assert members == {"ann@x.com": "removed", "bob@x.com": "removed", "cy@x.com": "added", "dan@x.com": "added"}
    deliver_connection(connection_id=connection.pk)
    assert subscribed(server, OLD) == {"ann@x.com", "bob@x.com", "cy@x.com", "stranger@x.com"}
    assert server.members(OLD)[subscriber_hash("dan@x.com")]["status"] == "unsubscribed"


def test_reconcile_removes_what_the_current_target_held_before_an_edit_moved_the_connection_away_and_back(
    server, connection, rings
):
    """A clean-up of the current list still owing removals (today an edit back to a list being cleaned is refused,
    so this guards the rule, should that change): the members handed to it are ours there; another list's not."""
    job = ConnectionJob.objects.create(
        connection=connection, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, settings={"list_id": OLD}, status="queued"
    )
    RetiredMember.objects.create(job=job, identity_type="email", value="former@x.com")
    elsewhere = ConnectionJob.objects.create(
        connection=connection, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, settings={"list_id": NEW}, status="done"
    )
    RetiredMember.objects.create(job=elsewhere, identity_type="email", value="other@x.com")
    subscribe_by_hand(server, "former@x.com", "other@x.com")

    reconcile = sync.connection_reconcile_start(connection=connection)
    run_jobs(rings)

    reconcile.refresh_from_db()
    assert (reconcile.result["removes_planned"], reconcile.result["not_ours"]) == (1, 1)
    assert list(PendingChange.objects.values_list("value", "action")) == [("former@x.com", "remove")]


def subscribe_by_hand(server: LocalMailchimpServer, *emails: str) -> None:
    import requests

    body = {"members": [{"email_address": e, "status": "subscribed"} for e in emails], "update_existing": True}
    answer = requests.post(f"{server.base_url}/lists/{OLD}", json=body, auth=("x", factories.MAILCHIMP_KEY), timeout=5)
    assert answer.json()["error_count"] == 0


def test_a_reconcile_the_partner_refuses_fails_with_its_reason(server, connection, rings):
    job = sync.connection_reconcile_start(connection=connection)
    server.fail_next(401)
    run_jobs(rings)
    job.refresh_from_db()
    assert job.status == "failed" and "API Key Invalid" in job.error
    assert PendingChange.objects.count() == 0


# --- Mailchimp lists requiring merge fields (item 7) ------------------------------------------------------


def test_a_list_requiring_merge_fields_fills_and_the_figures_count_skipped_fields(server, rings):
    server.create_list(
        "strict",
        merge_fields=[{"tag": "ADDRESS", "type": "address", "required": True}, {"tag": "AGE", "type": "number"}],
    )
    audience = factories.active_audience()
    factories.parisian("plain@x.com")
    factories.parisian("odd@x.com", age="forty")
    connection = factories.connect(audience, factories.mailchimp_output(), list_id="strict")
    report = deliver_connection(connection_id=connection.pk)

    assert report.delivered == 2
    assert subscribed(server, "strict") == {"plain@x.com", "odd@x.com"}
    stats = connection_stats(connection)
    assert (stats.delivered, stats.rejected, stats.fields_skipped) == (2, 0, 1)


def test_deleting_the_connection_finishes_an_old_lists_clean_up_first(server, connection, rings):
    lifecycle.connection_settings_update(connection=connection, settings={"list_id": NEW})
    deliver_connection(connection_id=connection.pk)
    lifecycle.connection_delete(connection=connection)  # before the old list's clean-up job ran

    assert lifecycle.connection_end(connection_id=connection.pk) == "deleted"
    assert server.members(OLD) == {} and server.members(NEW) == {}
