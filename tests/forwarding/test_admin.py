"""The tutorial "Connect an Audience Output", done through the admin.

Directory -> add the Mailchimp output -> create an audience -> Connect output (list id) ->
the audience page shows the connection and its figures -> pause / resume / test -> delete.
transaction.on_commit callbacks (doorbells, recomputes) never run inside the test
transaction, so no broker is needed.
"""

from __future__ import annotations

import json

import pytest
import responses
from django.contrib.messages import get_messages
from django.urls import reverse
from django.utils import timezone

from audiences.models import Audience
from audiences.profiles import profile_upsert
from audiences.services import audience_create
from connections.models import Connection, ConnectionMember
from forwarding.lifecycle import connection_create, connection_delete
from forwarding.models import DeliveryAttempt, PendingChange
from outputs.models import Output
from outputs.services import output_create

pytestmark = pytest.mark.django_db

MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
LIST_ID = "a1b2c3d4e5"
PARISIANS = {
    "and": [
        {"attribute": "status", "operator": "equals", "value": "Premium"},
        {"attribute": "favourite_city", "operator": "equals", "value": "Paris"},
    ]
}

DIRECTORY_URL = "/admin/outputs/output/directory/"
OUTPUT_ADD_URL = "/admin/outputs/output/add/?partner=mailchimp"


def url(name: str, *args: object) -> str:
    return reverse(f"admin:{name}", args=args)


def last_message(response) -> str:
    # Unfollowed redirects leave earlier messages in the cookie: the newest is last.
    return [str(m) for m in get_messages(response.wsgi_request)][-1]


def post_mailchimp_output(client, **overrides: str):
    """The tutorial's settings: Email Type HTML, Double Opt-In and Delete on Subscription End off
    (unticked boxes are simply not posted)."""
    data = {"name": "Mailchimp", "api_key": MAILCHIMP_KEY, "email_type": "html", "send_merge_fields": "on"}
    data.update(overrides)
    return client.post(OUTPUT_ADD_URL, data)


def post_audience(client, **overrides: str):
    data = {
        "name": "Potential Parisians",
        "external_name": "",
        "description": "Premium users who like Paris",
        "status": "active",
        "criteria": json.dumps(PARISIANS),
    }
    data.update(overrides)
    return client.post(url("audiences_audience_add"), data)


def parisian(email: str | None, customer: str) -> None:
    identities = [{"type": "customer", "value": customer}]
    if email:
        identities.append({"type": "email", "value": email})
    profile_upsert(identities=identities, attributes={"status": "Premium", "favourite_city": "Paris"})


@pytest.fixture
def output() -> Output:
    return output_create(
        name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY, "double_opt_in": False}
    )


@pytest.fixture
def audience() -> Audience:
    audience = audience_create(name="Potential Parisians", criteria=PARISIANS, status="active")
    # Profiles upserted while the audience is active join it at once (no recompute task needed).
    parisian("ana@example.com", "c1")
    parisian("bo@example.com", "c2")
    parisian(None, "c3")  # a member Mailchimp cannot receive: no email
    profile_upsert(identities=[{"type": "email", "value": "zed@example.com"}], attributes={"status": "Free"})
    return audience


@pytest.fixture
def connection(audience: Audience, output: Output) -> Connection:
    return connection_create(audience=audience, output=output, settings={"list_id": LIST_ID})


# --- the whole tutorial, in order ------------------------------------------------------------


def test_the_tutorial_through_the_admin(admin_client):
    # Add the Mailchimp output: Directory -> Mailchimp -> Configuration Settings -> Save.
    directory = admin_client.get(DIRECTORY_URL).content.decode()
    assert OUTPUT_ADD_URL in directory
    assert post_mailchimp_output(admin_client).status_code == 302
    output = Output.objects.get(name="Mailchimp")

    # The audience of the previous tutorial, and some users (the API writes profiles).
    assert post_audience(admin_client).status_code == 302
    audience = Audience.objects.get(name="Potential Parisians")
    parisian("ana@example.com", "c1")
    parisian("bo@example.com", "c2")
    parisian(None, "c3")

    # Connect your Audience: audience page -> Connect output -> the Mailchimp output -> list id -> Save.
    audience_page = url("audiences_audience_change", audience.pk)
    connect_url = url("audiences_audience_connect", audience.pk)
    assert connect_url in admin_client.get(audience_page).content.decode()
    assert f"?output={output.pk}" in admin_client.get(connect_url).content.decode()
    saved = admin_client.post(f"{connect_url}?output={output.pk}", {"list_id": LIST_ID})
    assert saved.url == f"{audience_page}#connections"
    connection = Connection.objects.get(audience=audience, output=output)

    # The audience page shows it: 3 members, 2 with an email Mailchimp can receive, 2 queued.
    page = admin_client.get(audience_page)
    assert url("connections_connection_change", connection.pk) in page.content.decode()
    stats = page.context["connection_rows"][0]["stats"]
    assert (stats.audience_size, stats.with_accepted_identity, stats.without_accepted_identity) == (3, 2, 1)
    assert (stats.delivered, stats.pending, stats.rejected) == (0, 2, 0)

    # The status switch, then delete.
    admin_client.post(url("connections_connection_pause", connection.pk))
    connection.refresh_from_db()
    assert connection.status == "paused"
    admin_client.post(url("connections_connection_resume", connection.pk))
    connection.refresh_from_db()
    assert connection.status == "sending"
    admin_client.post(url("connections_connection_delete", connection.pk), {"post": "yes"})
    connection.refresh_from_db()
    assert connection.status == "ending"


# --- the Directory and the output ------------------------------------------------------------


def test_directory_lists_every_partner_with_an_add_button(admin_client):
    response = admin_client.get(DIRECTORY_URL)
    assert response.status_code == 200
    html = response.content.decode()
    assert "Mailchimp" in html
    assert "Keeps a Mailchimp list" in html  # description
    assert "email" in html  # accepted identity types
    assert "Realtime" in html  # delivery mode
    assert "List: keeps an audience" in html  # pattern
    assert 'href="/admin/outputs/output/add/?partner=mailchimp"' in html


def test_output_list_leads_to_the_directory(admin_client):
    response = admin_client.get(url("outputs_output_changelist"))
    assert response.status_code == 200
    assert f'href="{DIRECTORY_URL}"' in response.content.decode()
    # Adding without a partner starts in the directory; an unknown partner too.
    assert admin_client.get("/admin/outputs/output/add/").url == DIRECTORY_URL
    response = admin_client.get("/admin/outputs/output/add/?partner=nope")
    assert response.url == DIRECTORY_URL
    assert "Unknown partner 'nope'" in last_message(response)


def test_add_mailchimp_output_stores_the_key_encrypted(admin_client):
    page = admin_client.get(OUTPUT_ADD_URL)
    assert page.status_code == 200
    html = page.content.decode()
    for label in ("API Key", "Email Type", "Double Opt-In", "Delete on Subscription End"):
        assert label in html
    assert 'type="password"' in html

    response = post_mailchimp_output(admin_client)

    assert response.status_code == 302, response.context["adminform"].form.errors
    output = Output.objects.get()
    assert output.partner_key == "mailchimp"
    assert MAILCHIMP_KEY not in output.encrypted_secrets
    assert "api_key" not in output.settings
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert output.settings == {
        "email_type": "html",
        "double_opt_in": False,
        "delete_on_subscription_end": False,
        "send_merge_fields": True,
    }

    change_page = admin_client.get(url("outputs_output_change", output.pk))
    assert change_page.status_code == 200
    html = change_page.content.decode()
    assert MAILCHIMP_KEY not in html
    assert "A value is stored. Leave blank to keep it" in html
    assert "API Key" in change_page.context["adminform"].form.fields["api_key"].label


def test_bad_api_key_shows_the_error_on_its_field_and_writes_nothing(admin_client):
    response = post_mailchimp_output(admin_client, api_key="f00dfeedbadkey")

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["api_key"]
    assert "data center" in errors["api_key"][0]
    assert "f00dfeedbadkey" not in response.content.decode()  # never rendered back
    assert Output.objects.count() == 0


def test_duplicate_output_name_shows_the_services_error(admin_client, output):
    response = post_mailchimp_output(admin_client)
    assert response.status_code == 200
    assert "already exists" in response.context["adminform"].form.errors["name"][0]
    assert Output.objects.count() == 1


def test_change_output_keeps_a_blank_secret_and_the_partner(admin_client, output):
    change_url = url("outputs_output_change", output.pk)
    response = admin_client.post(
        change_url, {"name": "Mailchimp EU", "api_key": "", "email_type": "text", "partner_key": "other"}
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    output.refresh_from_db()
    assert output.name == "Mailchimp EU"
    assert output.partner_key == "mailchimp"
    assert output.configuration()["api_key"] == MAILCHIMP_KEY
    assert output.settings["email_type"] == "text"

    new_key = "fedcba9876543210fedcba9876543210-us19"
    admin_client.post(change_url, {"name": "Mailchimp EU", "api_key": new_key, "email_type": "text"})
    output.refresh_from_db()
    assert output.configuration()["api_key"] == new_key
    assert new_key not in admin_client.get(change_url).content.decode()


def test_output_list_shows_partner_and_connections(admin_client, connection):
    response = admin_client.get(url("outputs_output_changelist"))
    output = response.context["cl"].result_list[0]
    assert output.connections_count == 1
    assert "Mailchimp" in response.content.decode()


# --- the audience ----------------------------------------------------------------------------


def test_create_audience_through_the_admin(admin_client):
    page = admin_client.get(url("audiences_audience_add"))
    assert "exclude" in page.content.decode()  # the criteria language help

    response = post_audience(admin_client)

    assert response.status_code == 302, response.context["adminform"].form.errors
    audience = Audience.objects.get()
    assert audience.status == Audience.Status.ACTIVE
    assert audience.criteria == PARISIANS


def test_criteria_errors_show_on_the_criteria_field(admin_client):
    bad = {"and": [{"attribute": "status", "operator": "is", "value": "Premium"}]}
    response = post_audience(admin_client, criteria=json.dumps(bad))
    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["criteria"]
    assert "criteria.and[0].operator" in errors["criteria"][0]

    response = post_audience(admin_client, criteria="{not json")
    assert "criteria" in response.context["adminform"].form.errors
    assert Audience.objects.count() == 0


def test_edit_audience_through_the_service(admin_client, audience):
    response = admin_client.post(
        url("audiences_audience_change", audience.pk),
        {
            "name": "Potential Parisians",
            "external_name": "Parisians",
            "description": "",
            "status": "active",
            "criteria": json.dumps(PARISIANS),
        },
    )
    assert response.status_code == 302, response.context["adminform"].form.errors
    audience.refresh_from_db()
    assert audience.external_name == "Parisians"
    assert audience.criteria_version == 1  # same criteria: no new version


def test_archiving_a_connected_audience_shows_the_services_error(admin_client, connection):
    audience = connection.audience
    response = admin_client.post(
        url("audiences_audience_change", audience.pk),
        {"name": audience.name, "external_name": "", "description": "", "status": "archived", "criteria": "{}"},
    )
    errors = response.context["adminform"].form.errors
    assert "criteria" in errors  # {} is not a criteria tree
    response = admin_client.post(
        url("audiences_audience_change", audience.pk),
        {
            "name": audience.name,
            "external_name": "",
            "description": "",
            "status": "archived",
            "criteria": json.dumps(PARISIANS),
        },
    )
    assert "This audience has connections" in response.context["adminform"].form.errors["status"][0]
    audience.refresh_from_db()
    assert audience.status == Audience.Status.ACTIVE


def test_audience_list_counts_efficiently(admin_client, audience, connection, django_assert_max_num_queries):
    for n in range(5):
        audience_create(name=f"Audience {n}", criteria={"and": []})
    with django_assert_max_num_queries(12):
        response = admin_client.get(url("audiences_audience_changelist"))
    rows = {a.name: a for a in response.context["cl"].result_list}
    assert rows["Potential Parisians"].size == 3
    assert rows["Potential Parisians"].connections_count == 1
    assert rows["Audience 0"].size == 0


# --- Connect your Audience --------------------------------------------------------------------


def test_connect_output_from_the_audience_page(admin_client, audience):
    # Add the output through the admin, as the tutorial does.
    assert post_mailchimp_output(admin_client).status_code == 302
    output = Output.objects.get()
    audience_page = url("audiences_audience_change", audience.pk)
    connect_url = url("audiences_audience_connect", audience.pk)
    assert f'href="{connect_url}"' in admin_client.get(audience_page).content.decode()

    # Step 1: pick the Mailchimp configuration.
    step1 = admin_client.get(connect_url)
    assert step1.status_code == 200
    assert f'href="?output={output.pk}"' in step1.content.decode()

    # Step 2: its connection settings (Audience ID = the list id).
    step2 = admin_client.get(f"{connect_url}?output={output.pk}")
    assert "Audience ID" in step2.content.decode()
    blank = admin_client.post(f"{connect_url}?output={output.pk}", {"list_id": ""})
    assert "list_id" in blank.context["form"].errors
    assert not Connection.objects.exists()

    response = admin_client.post(f"{connect_url}?output={output.pk}", {"list_id": LIST_ID})

    assert response.status_code == 302
    assert response.url == f"{audience_page}#connections"
    connection = Connection.objects.get()
    assert (connection.audience, connection.output) == (audience, output)
    assert connection.settings == {"list_id": LIST_ID}
    assert connection.status == Connection.Status.SENDING
    assert PendingChange.objects.filter(connection=connection, action="add").count() == 2  # the two emails

    # The audience page shows the connection and its figures.
    page = admin_client.get(audience_page)
    html = page.content.decode()
    assert url("connections_connection_change", connection.pk) in html
    row = page.context["connection_rows"][0]
    assert row["connection"] == connection
    stats = row["stats"]
    assert (stats.audience_size, stats.with_accepted_identity, stats.without_accepted_identity) == (3, 2, 1)
    assert (stats.delivered, stats.pending, stats.rejected) == (0, 2, 0)
    assert 'id="connections"' in html

    # Connecting the same output again: step 1 says so, and the service refuses.
    assert "Already connected" in admin_client.get(connect_url).content.decode()
    again = admin_client.post(f"{connect_url}?output={output.pk}", {"list_id": LIST_ID})
    assert "already connected" in again.context["form"].non_field_errors()[0]
    assert Connection.objects.count() == 1


def test_connecting_an_archived_audience_shows_the_services_error(admin_client, output):
    archived = audience_create(name="Old", criteria={"and": []}, status="archived")
    response = admin_client.post(
        f"{url('audiences_audience_connect', archived.pk)}?output={output.pk}", {"list_id": LIST_ID}
    )
    assert response.status_code == 200
    assert "is archived; it cannot be connected" in response.content.decode()
    assert not Connection.objects.exists()


def test_plain_add_connection_goes_through_an_audience(admin_client, audience):
    page = admin_client.get(url("connections_connection_add"))
    assert page.status_code == 200
    assert url("audiences_audience_connect", audience.pk) in page.content.decode()
    response = admin_client.get(f"{url('connections_connection_add')}?audience={audience.pk}")
    assert response.url == url("audiences_audience_connect", audience.pk)


# --- the connection: figures, status switch, delete -----------------------------------------


def test_connection_page_shows_settings_figures_attempts_and_rejections(admin_client, connection):
    now = timezone.now()
    DeliveryAttempt.objects.create(connection=connection, at=now, sent=2, delivered=1, rejected=1, result="partial")
    ConnectionMember.objects.create(
        connection=connection,
        identity_type="email",
        value="bo@example.com",
        state=ConnectionMember.State.REJECTED,
        reason="looks fake or invalid",
        updated_at=now,
    )
    response = admin_client.get(url("connections_connection_change", connection.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert LIST_ID in html and "Audience ID" in html
    assert 'id="connection-stats"' in html
    assert "looks fake or invalid" in html
    assert [a.result for a in response.context["attempts"]] == ["partial"]
    assert 'name="_save"' not in html  # nothing to save: the settings are read-only
    assert "Pause" in html and "Test connection" in html

    listing = admin_client.get(url("connections_connection_changelist"))
    row = listing.context["cl"].result_list[0]
    assert (row.delivered_count, row.pending_count, row.rejected_count) == (0, 2, 1)


def test_pause_and_resume_buttons(admin_client, connection):
    pause_url = url("connections_connection_pause", connection.pk)
    assert admin_client.get(pause_url).status_code == 405  # POST only

    response = admin_client.post(pause_url)
    assert response.url == url("connections_connection_change", connection.pk)
    connection.refresh_from_db()
    assert connection.status == Connection.Status.PAUSED
    assert connection.status_reason == "Paused by a user."
    assert "Paused" in last_message(response)
    assert "Resume" in admin_client.get(response.url).content.decode()

    admin_client.post(url("connections_connection_resume", connection.pk))
    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING


def test_resume_clears_a_fault(admin_client, connection):
    Connection.objects.filter(pk=connection.pk).update(status="faulted", status_reason="HTTP 401: API Key Invalid")
    page = admin_client.get(url("connections_connection_change", connection.pk)).content.decode()
    assert "HTTP 401: API Key Invalid" in page
    admin_client.post(url("connections_connection_resume", connection.pk))
    connection.refresh_from_db()
    assert (connection.status, connection.status_reason) == ("sending", "")


@responses.activate
def test_test_connection_button_shows_the_partners_answer(admin_client, connection):
    list_url = f"https://us6.api.mailchimp.com/3.0/lists/{LIST_ID}"
    responses.get(list_url, json={"name": "Parisians", "stats": {"member_count": 7, "unsubscribe_count": 1}})
    response = admin_client.post(url("connections_connection_test", connection.pk))
    assert "Mailchimp list 'Parisians' is reachable: 7 subscribed" in last_message(response)

    responses.replace(responses.GET, list_url, status=404, json={"title": "Resource Not Found"})
    response = admin_client.post(url("connections_connection_test", connection.pk))
    assert f"Mailchimp has no list with id '{LIST_ID}'" in last_message(response)


def test_pause_and_resume_actions_on_the_list(admin_client, connection):
    changelist = url("connections_connection_changelist")
    admin_client.post(changelist, {"action": "pause_connections", "_selected_action": [connection.pk]})
    connection.refresh_from_db()
    assert connection.status == Connection.Status.PAUSED
    admin_client.post(changelist, {"action": "resume_connections", "_selected_action": [connection.pk]})
    connection.refresh_from_db()
    assert connection.status == Connection.Status.SENDING


def test_delete_ends_the_connection_instead_of_deleting_the_row(admin_client, connection):
    delete_url = url("connections_connection_delete", connection.pk)
    page = admin_client.get(delete_url)
    assert page.status_code == 200
    assert "Delete on Subscription End" in page.content.decode()

    response = admin_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    connection.refresh_from_db()  # the row is still there
    assert connection.status == Connection.Status.ENDING
    assert not PendingChange.objects.filter(connection=connection).exists()
    assert "is ending" in last_message(response)
    page = admin_client.get(url("connections_connection_change", connection.pk)).content.decode()
    assert "being deleted" in page and ">Pause<" not in page
    # Pausing an ending connection is refused by the service, and the message says why.
    response = admin_client.post(url("connections_connection_pause", connection.pk))
    assert "being deleted" in last_message(response)
    # It is already being deleted: no second delete.
    assert admin_client.get(delete_url).status_code == 403


def test_bulk_delete_ends_the_connections(admin_client, connection, output):
    ended = connection_create(
        audience=audience_create(name="Other", criteria={"and": []}), output=output, settings={"list_id": "x1"}
    )
    connection_delete(connection=ended)
    response = admin_client.post(
        url("connections_connection_changelist"),
        {"action": "delete_selected", "_selected_action": [connection.pk, ended.pk], "post": "yes"},
    )
    connection.refresh_from_db()
    assert connection.status == Connection.Status.ENDING
    assert Connection.objects.filter(pk=ended.pk, status="ending").exists()
    assert response.status_code == 302


# --- profiles and forwarding: read-only lists --------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "audiences_profile_changelist",
        "audiences_membershipchange_changelist",
        "forwarding_pendingchange_changelist",
        "forwarding_deliveryattempt_changelist",
        "connections_connection_changelist",
        "audiences_audience_changelist",
    ],
)
def test_lists_render(admin_client, connection, name):
    DeliveryAttempt.objects.create(connection=connection, at=timezone.now(), sent=1, delivered=1, result="ok")
    assert admin_client.get(url(name)).status_code == 200


def test_lists_filter(admin_client, connection):
    assert admin_client.get(f"{url('audiences_membershipchange_changelist')}?kind__exact=entered").status_code == 200
    response = admin_client.get(f"{url('forwarding_pendingchange_changelist')}?retrying=no&action__exact=add")
    assert response.context["cl"].result_count == 2
    response = admin_client.get(f"{url('audiences_profile_changelist')}?q=ana@example.com")
    assert response.context["cl"].result_count == 1


def test_profile_page_is_read_only(admin_client, audience):
    profile = Audience.objects.get().memberships.first().profile
    response = admin_client.get(url("audiences_profile_change", profile.pk))
    assert response.status_code == 200
    html = response.content.decode()
    assert "favourite_city" in html and "Potential Parisians" in html
    assert 'name="_save"' not in html
    assert admin_client.get(url("audiences_profile_add")).status_code == 403


def test_view_only_staff_see_outputs_without_secrets(client, output, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user("viewer", password="x", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_output"))
    client.force_login(user)
    assert client.get(DIRECTORY_URL).status_code == 200
    page = client.get(url("outputs_output_change", output.pk))
    assert page.status_code == 200
    assert MAILCHIMP_KEY not in page.content.decode()
    assert client.get(OUTPUT_ADD_URL).status_code == 403
