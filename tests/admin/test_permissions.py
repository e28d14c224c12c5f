"""Least privilege in the admin, with the same roles and permissions as the REST API (config/roles.py).

Pages: each is a test that asks it as each role (in a savepoint rolled back after each request): the
allowed roles get 200 (or the view's redirect), the others 403. The buttons (Pause,
Resume, Test connection, Download, Connect output) and the list actions show only to the roles
that may use them, and a refused POST changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import responses
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from audiences import profiles
from audiences import services as audience_services
from connections.models import Connection, ConnectionMember
from forwarding.lifecycle import connection_create
from forwarding.models import DeliveryAttempt
from outputs.services import output_create
from tests.factories import MAILCHIMP_KEY, role_user
from tests.fakes.partners import BulkListPartner, registered

ROLES = ("viewer", "marketer", "operator", "admin")
ALL = frozenset(ROLES)
MARKETER = frozenset({"marketer", "admin"})
OPERATOR = frozenset({"operator", "admin"})
PEOPLE = frozenset({"marketer", "operator", "admin"})
ADMIN = frozenset({"admin"})
LIST_ID = "abc123"
CRITERIA = {"attribute": "plan", "operator": "equals", "value": "premium"}


@dataclass(frozen=True)
class Page:
    method: str
    name: str  # admin URL name, its argument one of the objects by key
    arg: str | None
    allowed: frozenset[str]
    query: str = ""  # may name the objects, as {output}
    data: tuple = ()
    json: dict | None = None  # a JSON body instead of a form


PAGES = [
    Page("GET", "audiences_audience_changelist", None, ALL),
    Page("GET", "audiences_audience_change", "audience", ALL),
    Page("GET", "audiences_audience_add", None, MARKETER),
    Page("GET", "audiences_audience_download", "audience", MARKETER),
    Page("POST", "audiences_audience_download", "audience", MARKETER, data=(("identity_types", "email"),)),
    Page("GET", "audiences_audience_connect", "audience", MARKETER),
    Page("GET", "audiences_audience_split", "audience", MARKETER),
    Page("POST", "audiences_audience_split", "audience", MARKETER, data=(("percentages", "50, 50"),)),
    Page("GET", "audiences_audience_connect_many", None, MARKETER, "audiences={audience}"),
    Page("GET", "audiences_audience_connect_many", None, MARKETER, "audiences={audience}&output={output}"),
    # The connect page's Test and Preview (nothing saved): add_connection, and test_connection or the view of
    # profiles and identities (see test_the_connect_page_asks_its_own_permissions_for_test_and_preview).
    Page(
        "POST",
        "audiences_audience_connect",
        "audience",
        MARKETER,
        "output={output}",
        (("list_id", LIST_ID), ("_test", "1")),
    ),
    Page(
        "POST",
        "audiences_audience_connect",
        "audience",
        MARKETER,
        "output={output}",
        (("list_id", LIST_ID), ("_preview", "1")),
    ),
    # The criteria builder's JSON views: who may add or change audiences.
    Page("GET", "audiences_audience_names", None, MARKETER),
    Page("POST", "audiences_audience_estimate", None, MARKETER, json={"criteria": CRITERIA}),
    Page("GET", "audiences_profile_changelist", None, PEOPLE),
    Page("GET", "audiences_profile_change", "profile", PEOPLE),
    Page("GET", "audiences_membershipchange_changelist", None, PEOPLE),
    Page("GET", "audiences_profileerasure_changelist", None, OPERATOR),
    Page("GET", "audiences_input_changelist", None, OPERATOR),
    Page("GET", "audiences_input_add", None, OPERATOR),
    Page("GET", "audiences_identityconflict_changelist", None, OPERATOR),
    Page("GET", "outputs_output_changelist", None, ALL),
    Page("GET", "outputs_output_directory", None, ALL),
    Page("GET", "outputs_output_change", "output", ALL),
    Page("GET", "outputs_output_add", None, OPERATOR, query="partner=mailchimp"),
    Page("GET", "outputs_output_delete", "output", OPERATOR),
    Page("GET", "connections_connection_changelist", None, ALL),
    Page("GET", "connections_connection_change", "connection", ALL),
    Page("GET", "connections_connection_add", None, MARKETER),
    Page("GET", "connections_connection_delete", "connection", PEOPLE),
    Page("POST", "connections_connection_pause", "connection", OPERATOR),
    Page("POST", "connections_connection_resume", "connection", OPERATOR),
    Page("POST", "connections_connection_test", "connection", PEOPLE),
    Page("GET", "connections_connection_progress", "connection", ALL),
    # A bulk connection's uploads (forwarding/bulk.py): the sending switch's permission.
    Page("GET", "connections_connection_change", "bulk_connection", ALL),
    Page("POST", "connections_connection_upload-now", "bulk_connection", OPERATOR),
    Page("GET", "connections_connection_upload_criteria", "bulk_connection", OPERATOR),
    Page(
        "POST", "connections_connection_upload_criteria", "bulk_connection", OPERATOR, data=(("upload_messages", "9"),)
    ),
    Page("GET", "forwarding_deliveryattempt_changelist", None, ALL),
    Page("GET", "forwarding_pendingchange_changelist", None, OPERATOR),
    Page("GET", "forwarding_connectionalert_changelist", None, OPERATOR),
    Page("GET", "auth_user_changelist", None, ADMIN),
    Page("GET", "authtoken_tokenproxy_changelist", None, ADMIN),
]


@pytest.fixture
def objects(db) -> Iterator[dict[str, int]]:
    with registered(BulkListPartner):
        yield _objects()


def _objects() -> dict[str, int]:
    audience = audience_services.audience_create(name="Premium", criteria=CRITERIA, status="active")
    profile = profiles.profile_upsert(
        identities=[{"type": "email", "value": "a@x.com"}], attributes={"plan": "premium"}
    ).profile
    output = output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    connection = connection_create(audience=audience, output=output, settings={"list_id": LIST_ID})
    DeliveryAttempt.objects.create(connection=connection, at=timezone.now(), sent=1, result="ok")
    ConnectionMember.objects.create(
        connection=connection,
        identity_type="email",
        value="fake@x.com",
        state="rejected",
        reason="looks fake",
        updated_at=timezone.now(),
    )
    bulk_output = output_create(name="Bulk", partner_key=BulkListPartner.key, settings={})
    bulk_connection = connection_create(audience=audience, output=bulk_output, settings={})
    return {
        "audience": audience.pk,
        "profile": profile.pk,
        "output": output.pk,
        "connection": connection.pk,
        "bulk_connection": bulk_connection.pk,
    }


def client_for(role: str) -> Client:
    client = Client()
    client.force_login(role_user(role))
    return client


def client_in_own_group(name: str, permissions) -> Client:
    """A staff user in a group of one's own (not a ready role) holding exactly these permissions."""
    group = Group.objects.create(name=name)
    group.permissions.add(*permissions)
    user = role_user(None)
    user.groups.add(group)
    client = Client()
    client.force_login(user)
    return client


@pytest.mark.parametrize("page", PAGES, ids=lambda p: f"{p.method} {p.name} {dict(p.data) or ''}".strip())
def test_each_role_reaches_exactly_its_pages(settings, objects, page):
    settings.PARTNER_API_BASE_URLS = {}
    address = reverse(f"admin:{page.name}", args=[objects[page.arg]] if page.arg else [])
    if page.query:
        address += "?" + page.query.format(**objects)
    for role in ROLES:
        client = client_for(role)
        before = sorted(Connection.objects.values_list("id", "status", "upload_messages"))
        # Each role's request in a savepoint rolled back after it, so every role finds the same objects.
        with transaction.atomic(), responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
            mock.get(f"https://us6.api.mailchimp.com/3.0/lists/{LIST_ID}", json={"name": "List", "stats": {}})
            if page.json is not None:
                response = client.post(address, page.json, content_type="application/json")
            else:
                response = getattr(client, page.method.lower())(address, dict(page.data))
            after = sorted(Connection.objects.values_list("id", "status", "upload_messages"))
            transaction.set_rollback(True)

        if role in page.allowed:
            assert response.status_code in (200, 302), (role, response.status_code)
            assert not (response.status_code == 302 and "/login/" in response.url), role
        else:
            assert response.status_code == 403, (role, response.status_code)
            assert after == before, role


@pytest.mark.parametrize("role", ROLES)
def test_a_bulk_connection_s_page_shows_upload_now_and_its_criteria_to_operators(objects, role):
    html = client_for(role).get(reverse("admin:connections_connection_change", args=[objects["bulk_connection"]]))
    html = html.content.decode()

    assert 'id="connection-uploads"' in html  # every role sees the uploads
    assert ('name="upload-now"' in html) == (role in OPERATOR)
    criteria_page = reverse("admin:connections_connection_upload_criteria", args=[objects["bulk_connection"]])
    assert (criteria_page in html) == (role in OPERATOR)


@pytest.mark.parametrize("role", ROLES)
def test_the_connection_page_shows_each_role_its_buttons_and_sections(objects, role):
    html = client_for(role).get(reverse("admin:connections_connection_change", args=[objects["connection"]]))
    html = html.content.decode()

    assert ('name="pause"' in html) == (role in OPERATOR)
    assert ('name="test"' in html) == (role in PEOPLE)
    assert ('id="delivery-attempts"' in html) is True  # every role may view delivery attempts
    assert ('id="rejections"' in html) == (role in OPERATOR)
    assert ("fake@x.com" in html) == (role in OPERATOR)


@pytest.mark.parametrize("role", ROLES)
def test_the_audience_page_shows_each_role_its_buttons(objects, role):
    html = client_for(role).get(reverse("admin:audiences_audience_change", args=[objects["audience"]]))
    html = html.content.decode()

    assert ("Download</a>" in html) == (role in MARKETER)
    assert ("Connect output" in html) == (role in MARKETER)
    assert 'id="connections"' in html  # every role may view connections


def test_the_connections_panel_shows_only_to_those_who_may_view_connections(objects):
    # A group of one's own: audiences without their connections (forwarding extends the audience's page).
    client = client_in_own_group(
        "audiences only", Permission.objects.filter(content_type__app_label="audiences", codename="view_audience")
    )

    html = client.get(reverse("admin:audiences_audience_change", args=[objects["audience"]])).content.decode()

    assert "Premium" in html
    assert 'id="connections"' not in html
    assert "Mailchimp" not in html  # the connected output's name


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("action", ["pause_connections", "resume_connections"])
def test_list_actions_are_offered_and_applied_to_operators_only(objects, role, action):
    # From a status the action applies to: a sending connection pauses, a faulted one resumes.
    before = {"pause_connections": "sending", "resume_connections": "faulted"}[action]
    Connection.objects.filter(pk=objects["connection"]).update(status=before)
    client = client_for(role)
    changelist = reverse("admin:connections_connection_changelist")
    action_form = client.get(changelist).context["action_form"]  # None when no action is offered
    offered = action_form.fields["action"].choices if action_form else []

    client.post(changelist, {"action": action, "_selected_action": [objects["connection"]]})

    assert (action in dict(offered)) == (role in OPERATOR)
    status = Connection.objects.get(pk=objects["connection"]).status
    expected = {"pause_connections": "paused", "resume_connections": "sending"}[action]
    assert status == (expected if role in OPERATOR else before)


def test_the_connect_page_asks_its_own_permissions_for_test_and_preview(settings, objects):
    """Connecting needs connections.add_connection; the page's Test is the connection's test
    (connections.test_connection), and its preview shows members' identities (personal data: the view of
    profiles and identities). A group with add_connection alone connects, but neither sees nor uses them."""
    settings.PARTNER_API_BASE_URLS = {}
    client = client_in_own_group(
        "connects only",
        Permission.objects.filter(
            content_type__app_label__in=("audiences", "connections"), codename__in=("view_audience", "add_connection")
        ),
    )
    address = reverse("admin:audiences_audience_connect", args=[objects["audience"]]) + f"?output={objects['output']}"

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get(f"https://us6.api.mailchimp.com/3.0/lists/{LIST_ID}", json={"name": "List", "stats": {}})
        page = client.get(address)
        tested = client.post(address, {"list_id": LIST_ID, "_test": "1"})
        previewed = client.post(address, {"list_id": LIST_ID, "_preview": "1"})
        marketer_page = client_for("marketer").get(address)

    assert page.status_code == 200
    assert 'name="_save"' in page.content.decode()
    assert 'name="_test"' not in page.content.decode() and 'name="_preview"' not in page.content.decode()
    assert (tested.status_code, previewed.status_code) == (403, 403)
    assert 'name="_test"' in marketer_page.content.decode() and 'name="_preview"' in marketer_page.content.decode()
