from __future__ import annotations

from datetime import timedelta

import pytest
import responses
from django.utils import timezone

from audiences import profiles
from audiences import services as audience_services
from audiences.models import Audience
from connections.models import Connection, ConnectionMember
from forwarding import lifecycle as connection_services
from forwarding.models import DeliveryAttempt, PendingChange
from outputs import services as output_services
from tests.fixtures.api import MAILCHIMP_KEY, PREMIUM, errors

URL = "/api/v1/connections/"
LIST_URL = "https://us6.api.mailchimp.com/3.0/lists/abc123"


def test_create_connection_queues_the_membership(api, audience, output):
    profiles.profile_upsert(identities=[{"type": "email", "value": "a@x.com"}], attributes={"plan": "premium"})
    profiles.profile_upsert(identities=[{"type": "customer", "value": "c-1"}], attributes={"plan": "premium"})

    response = api.post(
        URL, {"audience": audience.pk, "output": output.pk, "settings": {"list_id": "abc123"}}, format="json"
    )

    assert response.status_code == 201, response.data
    body = response.json()
    connection = Connection.objects.get()
    assert body["id"] == connection.pk
    assert body["audience"] == audience.pk
    assert body["output"] == output.pk
    assert body["settings"] == {"list_id": "abc123"}
    assert body["status"] == "sending"
    assert body["status_changed_at"]
    assert body["last_delivered_at"] is None
    assert body["stats"] == {
        "audience_size": 2,
        "with_accepted_identity": 1,
        "without_accepted_identity": 1,
        "delivered": 0,
        "pending": 1,
        "retrying": 0,
        "rejected": 0,
        "fields_skipped": 0,
    }
    assert PendingChange.objects.filter(connection=connection, value="a@x.com", action="add").exists()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"audience": 999999, "settings": {"list_id": "abc123"}}, "audience"),
        ({"output": 999999, "settings": {"list_id": "abc123"}}, "output"),
        ({"audience": "first", "settings": {"list_id": "abc123"}}, "audience"),
        ({"settings": {}}, "list_id"),
        ({}, "list_id"),
        ({"settings": {"list_id": "abc123", "tag": "x"}}, "tag"),
        ({"settings": "abc123"}, "settings"),
        ({"settings": {"list_id": "abc123"}, "status": "paused", "priority": 1}, "priority"),
    ],
)
def test_invalid_create_names_the_field(api, audience, output, body, field):
    response = api.post(URL, {"audience": audience.pk, "output": output.pk, **body}, format="json")

    assert response.status_code == 400
    assert field in errors(response)
    assert not Connection.objects.exists()


def test_an_archived_audience_cannot_be_connected(api, output):
    archived = audience_services.audience_create(name="Old", criteria=PREMIUM, status=Audience.Status.ARCHIVED)

    response = api.post(
        URL, {"audience": archived.pk, "output": output.pk, "settings": {"list_id": "abc123"}}, format="json"
    )

    assert response.status_code == 400
    assert "archived" in errors(response)["audience"][0]
    assert not Connection.objects.exists()


def test_connecting_twice_is_refused(api, connection):
    response = api.post(
        URL,
        {"audience": connection.audience_id, "output": connection.output_id, "settings": {"list_id": "other"}},
        format="json",
    )

    assert response.status_code == 400
    assert "already connected" in errors(response)["output"][0]


def test_list_filters_by_audience(api, connection, output):
    other = audience_services.audience_create(name="Other", criteria=PREMIUM)
    connection_services.connection_create(audience=other, output=output, settings={"list_id": "def456"})

    everything = api.get(URL).json()
    filtered = api.get(URL, {"audience": connection.audience_id}).json()

    assert everything["count"] == 2
    assert [c["id"] for c in filtered["results"]] == [connection.pk]
    assert errors(api.get(URL, {"audience": "x"})).keys() == {"audience"}


def test_responses_never_show_the_secret(api, connection):
    for response in (api.get(URL), api.get(f"{URL}{connection.pk}/")):
        assert response.status_code == 200
        assert MAILCHIMP_KEY not in response.content.decode()


def test_pause_and_resume(api, connection):
    PendingChange.objects.filter(connection=connection).update(attempts=3)

    paused = api.post(f"{URL}{connection.pk}/pause/")

    assert paused.status_code == 200
    assert paused.json()["status"] == "paused"
    assert paused.json()["status_reason"] == "Paused by a user."

    resumed = api.post(f"{URL}{connection.pk}/resume/")

    assert resumed.status_code == 200
    assert resumed.json()["status"] == "sending"
    assert resumed.json()["status_reason"] == ""
    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING


def test_resume_clears_a_fault(api, connection):
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.FAULTED, status_reason="HTTP 401")

    response = api.post(f"{URL}{connection.pk}/resume/")

    assert response.json()["status"] == "sending"


@responses.activate
def test_resume_if_test_passes_leaves_a_refused_key_faulted_then_resumes_once_fixed(api, connection):
    Connection.objects.filter(pk=connection.pk).update(
        status=Connection.Status.FAULTED, fault_cause="refused", status_reason="HTTP 401"
    )
    responses.get(LIST_URL, status=401, json={"title": "API Key Invalid", "detail": "Your API key may be invalid"})

    refused = api.post(f"{URL}{connection.pk}/resume-if-test-passes/")

    assert refused.status_code == 400
    assert "API Key Invalid" in errors(refused)["status"][0]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.FAULTED
    responses.replace(responses.GET, LIST_URL, json={"name": "List", "stats": {}})

    resumed = api.post(f"{URL}{connection.pk}/resume-if-test-passes/")

    assert resumed.status_code == 200
    assert resumed.json()["status"] == "sending"


def test_delete_answers_202_ending(api, connection):
    response = api.delete(f"{URL}{connection.pk}/")

    assert response.status_code == 202
    assert response.json()["id"] == connection.pk
    assert response.json()["status"] == "ending"
    connection.refresh_from_db()
    assert connection.status == Connection.Status.ENDING
    assert not PendingChange.objects.filter(connection=connection).exists()


@pytest.mark.parametrize("verb", ["pause", "resume"])
def test_an_ending_connection_cannot_be_paused_or_resumed(api, connection, verb):
    api.delete(f"{URL}{connection.pk}/")

    response = api.post(f"{URL}{connection.pk}/{verb}/")

    assert response.status_code == 400
    assert "being deleted" in errors(response)["status"][0]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.ENDING


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [("post", "pause/", None), ("put", "", {"status": "paused"}), ("patch", "", {"status": "paused"})],
)
def test_a_faulted_connection_is_not_paused_by_any_route(api, connection, method, path, body):
    """As in the admin (connections/status.py): a faulted connection sends nothing already; pausing it would
    only hide its fault. Resume is the way out."""
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.FAULTED, status_reason="HTTP 401")

    response = getattr(api, method)(f"{URL}{connection.pk}/{path}", body, format="json")

    assert response.status_code == 400
    assert "faulted connection cannot be paused" in errors(response)["status"][0]
    connection.refresh_from_db()
    assert (connection.status, connection.status_reason) == (Connection.Status.FAULTED, "HTTP 401")


def test_pausing_a_paused_connection_changes_nothing(api, connection):
    paused_at = connection_services.connection_pause(connection=connection).status_changed_at

    response = api.post(f"{URL}{connection.pk}/pause/")

    assert (response.status_code, response.json()["status"]) == (200, "paused")
    connection.refresh_from_db()
    assert connection.status_changed_at == paused_at


def test_actions_on_an_unknown_connection_are_404(api):
    assert api.post(f"{URL}999999/pause/").status_code == 404
    assert api.get(f"{URL}999999/attempts/").status_code == 404


def test_bad_settings_are_refused_naming_the_setting_and_actions_are_post_only(api, connection):
    response = api.patch(f"{URL}{connection.pk}/", {"settings": {"list_id": "a/b"}}, format="json")

    assert list(errors(response)) == ["list_id"]
    assert api.get(f"{URL}{connection.pk}/pause/").status_code == 405


def test_test_reports_success(api, connection, settings):
    # The environment may point Mailchimp at a local server; this test fakes the real one.
    settings.PARTNER_API_BASE_URLS = {}
    with responses.RequestsMock() as mock:
        mock.get(LIST_URL, json={"name": "Newsletter", "stats": {"member_count": 3, "unsubscribe_count": 1}})

        response = api.post(f"{URL}{connection.pk}/test/")

        assert mock.calls[0].request.headers["Authorization"].startswith("Basic ")
    assert response.status_code == 200
    assert response.json() == {
        "ok": True,
        "message": "Mailchimp list 'Newsletter' is reachable: 3 subscribed, 1 unsubscribed.",
    }
    assert MAILCHIMP_KEY not in response.content.decode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, {"title": "Resource Not Found", "detail": "The requested resource could not be found."}, "no list"),
        (401, {"title": "API Key Invalid", "detail": "Your API key may be invalid."}, "API Key Invalid"),
    ],
)
def test_test_reports_failure_with_200(api, connection, settings, status, body, expected):
    settings.PARTNER_API_BASE_URLS = {}
    with responses.RequestsMock() as mock:
        mock.get(LIST_URL, status=status, json=body)

        response = api.post(f"{URL}{connection.pk}/test/")

    assert response.status_code == 200
    assert response.json()["ok"] is False
    assert expected in response.json()["message"]


def test_test_uses_the_stored_key(api, connection, settings):
    settings.PARTNER_API_BASE_URLS = {}
    other_key = "fedcba9876543210fedcba9876543210-us21"
    output_services.output_update(output=connection.output, settings={"api_key": other_key})
    with responses.RequestsMock() as mock:
        mock.get("https://us21.api.mailchimp.com/3.0/lists/abc123", json={"name": "N", "stats": {}})

        assert api.post(f"{URL}{connection.pk}/test/").json()["ok"] is True


def test_attempts_are_paginated_newest_first(api, connection):
    now = timezone.now()
    DeliveryAttempt.objects.bulk_create(
        [
            DeliveryAttempt(connection=connection, at=now - timedelta(minutes=n), sent=n, delivered=n, result="ok")
            for n in range(60)
        ]
    )

    response = api.get(f"{URL}{connection.pk}/attempts/", {"limit": 50})

    assert response.status_code == 200
    assert response.json()["count"] == 60
    attempts = response.json()["results"]
    assert len(attempts) == 50
    assert [a["sent"] for a in attempts[:3]] == [0, 1, 2]
    assert set(attempts[0]) == {
        "id",
        "kind",
        "at",
        "duration_ms",
        "sent",
        "delivered",
        "rejected",
        "retried",
        "result",
        "error",
        "http_status",
        "error_code",
        "task_id",
    }


def test_rejections_lists_rejected_members_only(api, connection):
    now = timezone.now()
    ConnectionMember.objects.bulk_create(
        [
            ConnectionMember(
                connection=connection,
                identity_type="email",
                value="fake@x.com",
                state="rejected",
                reason="looks fake",
                updated_at=now,
            ),
            ConnectionMember(
                connection=connection,
                identity_type="email",
                value="gone@x.com",
                state="rejected",
                reason="forgotten email",
                updated_at=now - timedelta(hours=1),
            ),
            ConnectionMember(
                connection=connection, identity_type="email", value="ok@x.com", state="added", updated_at=now
            ),
        ]
    )

    response = api.get(f"{URL}{connection.pk}/rejections/", {"limit": 1})

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert body["results"] == [
        {
            "identity_type": "email",
            "value": "fake@x.com",
            "reason": "looks fake",
            "updated_at": body["results"][0]["updated_at"],
        }
    ]
    assert api.get(f"{URL}{connection.pk}/").json()["stats"]["rejected"] == 2


@pytest.mark.parametrize("method", ["put", "patch"])
def test_put_and_patch_switch_the_status(api, connection, method):
    send = getattr(api, method)

    paused = send(f"{URL}{connection.pk}/", {"status": "paused"}, format="json")

    assert paused.status_code == 200, paused.json()
    assert paused.json()["status"] == "paused"
    Connection.objects.filter(pk=connection.pk).update(status=Connection.Status.FAULTED)
    resumed = send(f"{URL}{connection.pk}/", {"status": "sending"}, format="json")
    assert resumed.json()["status"] == "sending"  # resuming clears the fault
    assert resumed.json()["status_reason"] == ""


def test_what_was_read_can_be_sent_back(api, connection):
    shown = api.get(f"{URL}{connection.pk}/").json()

    response = api.put(f"{URL}{connection.pk}/", {**shown, "status": "paused"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "paused"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"status": "faulted"}, "status"),
        ({"status": "ending"}, "status"),
        ({"status": "paused", "audience": 999999}, "audience"),
        ({"status": "paused", "output": 999999}, "output"),
        ({"status": "paused", "settings": {"list_id": "a b"}}, "list_id"),
        ({"status": "paused", "settings": "abc"}, "settings"),
        ({"status": "paused", "priority": 1}, "priority"),
    ],
)
def test_what_cannot_be_edited_is_refused_naming_the_field(api, connection, body, field):
    response = api.patch(f"{URL}{connection.pk}/", body, format="json")

    assert list(errors(response)) == [field]
    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING


def test_put_requires_the_status(api, connection):
    assert list(errors(api.put(f"{URL}{connection.pk}/", {}, format="json"))) == ["status"]
