"""Delivery's per-member decisions (forwarding/delivery.py) against the local Mailchimp behind the
fault-injecting front (local_partners/faulty.py), on the real database: what happens to a member
when the partner's answer never comes, refuses an update, or asks for a retry."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import responses
from django.utils import timezone

from audiences import profiles
from connections.models import Connection, ConnectionMember
from forwarding.delivery import deliver_connection
from forwarding.models import DeliveryAttempt, PendingChange
from forwarding.serializers import DeliveryAttemptSerializer
from local_partners.faulty import FaultyMailchimp
from local_partners.mailchimp import LocalMailchimpServer
from tests import factories

pytestmark = pytest.mark.django_db
LIST_ID = "list1"


@pytest.fixture
def partner(settings, rings) -> Iterator[FaultyMailchimp]:
    upstream = LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY])
    upstream.create_list(LIST_ID, "Potential Parisians")
    front = FaultyMailchimp(upstream, seed=1).start()
    settings.PARTNER_API_BASE_URLS = {"mailchimp": front.base_url}
    yield front
    front.stop()
    upstream.stop()


@pytest.fixture
def connection(partner):
    return factories.connect(factories.active_audience(), factories.mailchimp_output(), list_id=LIST_ID)


def leave(email: str) -> None:
    profiles.profile_upsert(identities=[{"type": "email", "value": email}], attributes={"status": "Free"})


def status_at_partner(partner: FaultyMailchimp, email: str) -> str | None:
    return partner.statuses(LIST_ID).get(email)


def due_now() -> None:
    """Time has passed: the pending changes are due, and the connection's own backoff after a failed
    call (forwarding/recovery.py) is over."""
    PendingChange.objects.update(next_attempt_at="2000-01-01T00:00:00Z")
    Connection.objects.update(throttled_until=None)


@pytest.mark.parametrize("fault", ["read timeout", "connection dropped after apply"])
def test_a_member_added_with_an_unknown_outcome_is_removed_when_it_leaves(partner, connection, settings, fault):
    """Issue 6 defect 1: the partner applied the add but its answer never reached us; the user
    then leaves. The removal must be sent, or the user stays subscribed for good."""
    factories.parisian("unsure@x.com")
    if fault == "read timeout":
        settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (2.0, 0.3)}
        partner.slow(1.0)
    else:
        partner.drop_after_apply(1)

    report = deliver_connection(connection_id=connection.pk)

    assert report.errors and report.delivered == 0  # we never learnt the outcome
    assert status_at_partner(partner, "unsure@x.com") == "subscribed"  # but the partner applied it
    assert ConnectionMember.objects.get(value="unsure@x.com").state == ConnectionMember.State.MAYBE_HELD

    leave("unsure@x.com")  # coalesced: the pending add becomes a remove
    partner.heal()
    due_now()
    report = deliver_connection(connection_id=connection.pk)

    assert report.skipped == 0 and report.delivered == 1
    assert status_at_partner(partner, "unsure@x.com") == "unsubscribed"
    assert ConnectionMember.objects.get(value="unsure@x.com").state == ConnectionMember.State.REMOVED
    assert not PendingChange.objects.exists()


# --- per-member outcomes, against Mailchimp's contract faked with `responses` (issue 8 item 6) -------

LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/list1"
OK = {"new_members": [], "updated_members": [], "errors": [], "error_count": 0}


def member_error(email: str, error: str) -> dict:
    return {"errors": [{"email_address": email, "error": error, "error_code": "ERROR_GENERIC"}], "error_count": 1}


def sent(call_index: int) -> dict[str, str]:
    return {m["email_address"]: m["status"] for m in json.loads(responses.calls[call_index].request.body)["members"]}


@pytest.fixture
def mailchimp_connection(rings):
    return factories.connect(factories.active_audience(), factories.mailchimp_output())


@responses.activate
def test_a_refused_update_of_a_held_member_keeps_it_held_so_it_is_later_unsubscribed(mailchimp_connection):
    """Mailchimp holds ann; an update (new attributes) is refused for her. She is still on the list, so
    when she leaves, the unsubscribe must go out (were she marked rejected, it would be skipped)."""
    factories.parisian("ann@x.com")
    responses.post(LIST_URL, json=OK)
    deliver_connection(connection_id=mailchimp_connection.pk)
    profiles.profile_upsert(identities=[{"type": "email", "value": "ann@x.com"}], attributes={"nickname": "Annie"})
    responses.replace(responses.POST, LIST_URL, json=member_error("ann@x.com", "Your merge fields were invalid."))

    report = deliver_connection(connection_id=mailchimp_connection.pk)

    assert (report.rejected, sent(1)) == (1, {"ann@x.com": "subscribed"})
    # A merge-field refusal is tried once more without the merge fields (here refused again).
    assert "merge_fields" not in json.loads(responses.calls[2].request.body)["members"][0]
    member = ConnectionMember.objects.get(value="ann@x.com")
    assert member.state == ConnectionMember.State.ADDED and "merge fields" in member.reason
    leave("ann@x.com")
    responses.replace(responses.POST, LIST_URL, json=OK)

    report = deliver_connection(connection_id=mailchimp_connection.pk)

    assert (report.skipped, report.delivered, sent(3)) == (0, 1, {"ann@x.com": "unsubscribed"})
    assert ConnectionMember.objects.get(value="ann@x.com").state == ConnectionMember.State.REMOVED


@responses.activate
def test_a_per_member_retry_is_backed_off_and_sent_again_not_rejected(mailchimp_connection):
    """Mailchimp's "signed up to a lot of lists very recently" asks to try that member later: the
    member stays pending with a backoff, is never counted or listed as rejected, and goes out again."""
    factories.parisian("busy@x.com")
    factories.parisian("calm@x.com")
    responses.post(
        LIST_URL, json=member_error("busy@x.com", "busy@x.com has signed up to a lot of lists very recently")
    )
    before = timezone.now()

    report = deliver_connection(connection_id=mailchimp_connection.pk)

    assert (report.delivered, report.rejected, report.retried) == (1, 0, 1)
    retry = PendingChange.objects.get()
    assert (retry.value, retry.action, retry.attempts) == ("busy@x.com", "add", 1)
    assert retry.next_attempt_at > before and "a lot of lists" in retry.last_error
    assert not ConnectionMember.objects.filter(state=ConnectionMember.State.REJECTED).exists()
    assert DeliveryAttempt.objects.get().result == DeliveryAttempt.Result.PARTIAL
    responses.replace(responses.POST, LIST_URL, json=OK)
    due_now()

    report = deliver_connection(connection_id=mailchimp_connection.pk)

    assert (report.delivered, sent(1)) == (1, {"busy@x.com": "subscribed"})
    assert ConnectionMember.objects.get(value="busy@x.com").state == ConnectionMember.State.ADDED
    assert not PendingChange.objects.exists()


# --- attempts worth reading (issue 8 item 7) ------------------------------------------------------


def test_an_attempt_keeps_the_http_status_the_partners_code_the_task_and_the_duration(partner, connection):
    factories.parisian("ann@x.com")
    partner.slow(0.2)

    deliver_connection(connection_id=connection.pk, task_id="task-1")

    attempt = DeliveryAttempt.objects.get()
    assert (attempt.result, attempt.http_status, attempt.error_code, attempt.task_id) == ("ok", 200, "", "task-1")
    assert attempt.duration_ms >= 200


def test_a_refused_key_is_recorded_with_the_partners_code_and_no_secret(partner, connection):
    factories.parisian("ann@x.com")
    partner.refuse_key()

    deliver_connection(connection_id=connection.pk, task_id="task-2")

    attempt = DeliveryAttempt.objects.get()
    assert (attempt.result, attempt.http_status, attempt.error_code) == ("auth", 401, "API Key Invalid")
    recorded = json.dumps(DeliveryAttemptSerializer(attempt).data)
    assert factories.MAILCHIMP_KEY not in recorded and factories.MAILCHIMP_KEY.split("-")[0] not in recorded


def test_an_attempt_without_an_answer_has_no_status_and_masks_addresses_in_the_partners_words(
    partner, connection, settings
):
    factories.parisian("ann@x.com")
    settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (2.0, 0.3)}
    partner.slow(1.0)
    deliver_connection(connection_id=connection.pk)
    partner.heal()
    partner.upstream.fail_next(
        400, body={"title": "Invalid Resource", "status": 400, "detail": "ann@x.com is not allowed here"}
    )
    due_now()
    deliver_connection(connection_id=connection.pk)

    timeout, refused = DeliveryAttempt.objects.order_by("id")
    assert (timeout.result, timeout.http_status, timeout.error_code) == ("transient", None, "")
    assert (refused.result, refused.http_status, refused.error_code) == ("permanent", 400, "Invalid Resource")
    assert "[email] is not allowed here" in refused.error and "ann@x.com" not in refused.error


def test_the_attempt_list_shows_them_in_the_admin_and_the_api(partner, connection, admin_client):
    factories.parisian("ann@x.com")
    partner.refuse_key()
    deliver_connection(connection_id=connection.pk, task_id="task-3")

    page = admin_client.get("/admin/forwarding/deliveryattempt/").content.decode()
    assert all(text in page for text in ("401", "API Key Invalid", "task-3"))
    answer = admin_client.get(f"/api/v1/connections/{connection.pk}/attempts/").json()["results"][0]
    assert {k: answer[k] for k in ("http_status", "error_code", "task_id")} == {
        "http_status": 401,
        "error_code": "API Key Invalid",
        "task_id": "task-3",
    }
    assert answer["duration_ms"] >= 0


def reenter(email: str, **attributes) -> None:
    profiles.profile_upsert(
        identities=[{"type": "email", "value": email}],
        attributes={"status": "Premium", "favourite_city": "Paris", **attributes},
    )


def test_a_member_who_left_and_reentered_before_the_removal_went_out_is_not_added_again(partner, connection):
    """Issue 6: the outbox keeps the last word, so leave-then-re-enter leaves an add the partner holds already,
    with the same content. It is not sent again (the fault suite counted it as a duplicate write)."""
    factories.parisian("back@x.com")
    assert deliver_connection(connection_id=connection.pk).delivered == 1
    leave("back@x.com")
    reenter("back@x.com")

    report = deliver_connection(connection_id=connection.pk)

    assert (report.delivered, report.skipped) == (0, 1)
    assert len(partner.writes(LIST_ID, "back@x.com")) == 1
    assert status_at_partner(partner, "back@x.com") == "subscribed"
    assert not PendingChange.objects.exists()


def test_a_reentering_member_whose_attributes_changed_is_added_again_with_them(partner, connection):
    factories.parisian("back@x.com")
    deliver_connection(connection_id=connection.pk)
    leave("back@x.com")
    reenter("back@x.com", first_name="Ann")

    report = deliver_connection(connection_id=connection.pk)

    assert (report.delivered, report.skipped) == (1, 0)
    assert len(partner.writes(LIST_ID, "back@x.com")) == 2


def test_after_an_update_whose_answer_never_came_the_same_add_is_sent_again(partner, connection, settings):
    """The partner may hold either version once an update went unanswered: an add is then never skipped,
    even one identical to what it acknowledged before."""
    factories.parisian("back@x.com", first_name="Bob")
    deliver_connection(connection_id=connection.pk)
    leave("back@x.com")
    reenter("back@x.com", first_name="Ann")
    settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (2.0, 0.3)}
    partner.slow(1.0)
    assert deliver_connection(connection_id=connection.pk).errors  # applied, answer lost
    partner.heal()
    leave("back@x.com")
    reenter("back@x.com", first_name="Bob")  # the content first acknowledged
    due_now()

    report = deliver_connection(connection_id=connection.pk)

    assert (report.delivered, report.skipped) == (1, 0)
    assert len(partner.writes(LIST_ID, "back@x.com")) == 3


def test_a_change_committed_after_a_short_claim_is_delivered_before_the_drain_leaves(partner, connection, monkeypatch):
    """A drain whose claim came back short stops without claiming again; a change committed just after that
    claim (its ring found the lease taken and went away) is still delivered: the drain looks once more after
    letting go of the lease, and takes it again for the change."""
    from forwarding import delivery

    factories.parisian("first@x.com")
    claim = delivery._claim
    claims: list[int] = []

    def claim_then_a_change_commits(connection_id: int, size: int, after: int):
        batch = claim(connection_id, size, after)
        claims.append(len(batch))
        if len(claims) == 1:
            factories.parisian("late@x.com")  # committed after the claim that took first@x.com alone
        return batch

    monkeypatch.setattr(delivery, "_claim", claim_then_a_change_commits)

    report = deliver_connection(connection_id=connection.pk)

    assert claims == [1, 1]  # no empty claim after either short one
    assert report.delivered == 2
    assert status_at_partner(partner, "late@x.com") == "subscribed"
    assert not PendingChange.objects.exists()
