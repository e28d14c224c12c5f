"""Least privilege in the REST API: every endpoint, every role (config/roles.py).

The table says which roles may use each endpoint; each endpoint is a test that calls it as each
role, in a savepoint rolled back after each call: the allowed roles get the endpoint's success
status, the others 403, and a refused request writes nothing. A staff user without a group and a
non-staff user holding every permission get 403 everywhere, no token 401. The table must cover
every operation of the OpenAPI schema, and every viewset action must declare its permissions.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import responses
from django.contrib.auth.models import Group
from django.db import transaction
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audiences import profiles
from audiences import services as audience_services
from audiences.models import Audience, Profile, ProfileErasure
from connections.models import Connection
from forwarding.lifecycle import connection_create
from forwarding.models import ConnectionJob
from outputs.models import Output
from outputs.services import output_create
from tests.factories import role_user
from tests.fakes.partners import BulkListPartner, registered
from tests.fixtures.api import MAILCHIMP_KEY, PREMIUM

ROLES = ("viewer", "marketer", "operator", "admin")
ALL = frozenset(ROLES)
MARKETER = frozenset({"marketer", "admin"})
OPERATOR = frozenset({"operator", "admin"})
PEOPLE = frozenset({"marketer", "operator", "admin"})  # who may see personal data
ADMIN = frozenset({"admin"})


@dataclass(frozen=True)
class Endpoint:
    method: str
    # with {audience}, {spare_audience}, {output}, {spare_output}, {connection}, {bulk_connection}, {profile}, {erasure}
    path: str
    allowed: frozenset[str]
    success: int
    body: dict | None = None
    query: str = ""

    @property
    def operation(self) -> tuple[str, str]:
        """As the OpenAPI schema names it."""
        template = self.path
        for name in (
            "audience",
            "spare_audience",
            "output",
            "spare_output",
            "connection",
            "bulk_connection",
            "profile",
            "erasure",
        ):
            template = template.replace("{" + name + "}", "{id}")
        template = template.replace("{job}", "{job_id}")
        return self.method, f"/api/v1{template}"


ENDPOINTS = [
    Endpoint("GET", "/profiles/", PEOPLE, 200),
    Endpoint("POST", "/profiles/", OPERATOR, 201, {"identities": [{"type": "email", "value": "new@x.com"}]}),
    Endpoint("GET", "/profiles/{profile}/", PEOPLE, 200),
    Endpoint("GET", "/profiles/{profile}/history/", PEOPLE, 200),
    # Data-subject erasure (audiences/erasure.py): audiences.erase_profile; its records hold no personal data.
    Endpoint("POST", "/erasures/", OPERATOR, 202, {"identity_type": "email", "identity_value": "a@x.com"}),
    Endpoint("GET", "/erasures/", OPERATOR, 200),
    Endpoint("GET", "/erasures/{erasure}/", OPERATOR, 200),
    Endpoint("POST", "/profiles/{profile}/merge/", OPERATOR, 200, {"profile": "{spare_profile}"}),
    Endpoint("GET", "/audiences/", ALL, 200),
    Endpoint("POST", "/audiences/", MARKETER, 201, {"name": "New", "criteria": PREMIUM}),
    Endpoint("GET", "/audiences/{audience}/", ALL, 200),
    Endpoint("PUT", "/audiences/{audience}/", MARKETER, 200, {"name": "Renamed", "criteria": PREMIUM}),
    Endpoint("PATCH", "/audiences/{audience}/", MARKETER, 200, {"description": "changed"}),
    Endpoint("DELETE", "/audiences/{spare_audience}/", ADMIN, 204),
    Endpoint("GET", "/audiences/{audience}/members/", PEOPLE, 200),
    Endpoint("GET", "/audiences/{audience}/download/", MARKETER, 200, query="identity_types=email"),
    Endpoint("GET", "/audiences/download/", MARKETER, 200, query="audiences={audience}&identity_types=email"),
    # The criteria builder's reads: who may add or change audiences (config/roles.py's BUILD_AUDIENCES).
    Endpoint("POST", "/audiences/estimate/", MARKETER, 200, {"criteria": PREMIUM}),
    Endpoint("GET", "/audiences/names/", MARKETER, 200),
    Endpoint("GET", "/partners/", ALL, 200),
    Endpoint("GET", "/outputs/", ALL, 200),
    Endpoint(
        "POST",
        "/outputs/",
        OPERATOR,
        201,
        {"name": "New", "partner": "mailchimp", "settings": {"api_key": MAILCHIMP_KEY}},
    ),
    Endpoint("GET", "/outputs/{output}/", ALL, 200),
    Endpoint("PUT", "/outputs/{output}/", OPERATOR, 200, {"name": "Renamed", "partner": "mailchimp"}),
    Endpoint("PATCH", "/outputs/{output}/", OPERATOR, 200, {"name": "Renamed"}),
    Endpoint("DELETE", "/outputs/{spare_output}/", OPERATOR, 204),
    Endpoint("POST", "/profiles/{profile}/remove-identity/", OPERATOR, 200, {"type": "customer", "value": "a-1"}),
    Endpoint("GET", "/connections/", ALL, 200),
    Endpoint(
        "POST",
        "/connections/",
        MARKETER,
        201,
        {"audience": "{audience}", "output": "{spare_output}", "settings": {"list_id": "other"}},
    ),
    Endpoint("GET", "/connections/{connection}/", ALL, 200),
    Endpoint("PUT", "/connections/{connection}/", OPERATOR, 200, {"status": "paused"}),
    Endpoint("PATCH", "/connections/{connection}/", OPERATOR, 200, {"status": "paused"}),
    Endpoint("DELETE", "/connections/{connection}/", PEOPLE, 202),
    Endpoint("POST", "/connections/{connection}/pause/", OPERATOR, 200),
    Endpoint("POST", "/connections/{connection}/resume/", OPERATOR, 200),
    Endpoint("POST", "/connections/{connection}/resume-if-test-passes/", OPERATOR, 200),
    Endpoint("POST", "/connections/{connection}/test/", PEOPLE, 200),
    # A bulk connection's upload (forwarding/bulk.py): the sending switch, as its criteria (PUT / PATCH).
    Endpoint("POST", "/connections/{bulk_connection}/upload-now/", OPERATOR, 202),
    Endpoint("PATCH", "/connections/{bulk_connection}/", OPERATOR, 200, {"upload_messages": 10}),
    Endpoint("GET", "/connections/{connection}/attempts/", ALL, 200),
    Endpoint("GET", "/connections/{connection}/rejections/", OPERATOR, 200),
    # Counts and reasons (the partner's quoted addresses masked), like the connection's own figures.
    Endpoint("GET", "/connections/{connection}/funnel/", ALL, 200),
    Endpoint("POST", "/connections/{connection}/settings-preview/", ALL, 200, {"settings": {"list_id": "other"}}),
    Endpoint("POST", "/connections/{connection}/resync/", PEOPLE, 200),
    Endpoint("POST", "/connections/{connection}/reconcile/", PEOPLE, 202),
    Endpoint("GET", "/connections/{connection}/jobs/", ALL, 200),
    Endpoint("GET", "/connections/{connection}/jobs/{job}/", ALL, 200),
]


@pytest.fixture
def objects(db) -> Iterator[dict[str, int]]:
    with registered(BulkListPartner):
        yield _objects()


def _objects() -> dict[str, int]:
    audience = audience_services.audience_create(name="Premium", criteria=PREMIUM, status=Audience.Status.ACTIVE)
    spare_audience = audience_services.audience_create(name="Spare", criteria=PREMIUM)
    output = output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    spare_output = output_create(name="Spare", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    connection = connection_create(audience=audience, output=output, settings={"list_id": "abc123"})
    bulk_output = output_create(name="Bulk", partner_key=BulkListPartner.key, settings={})
    bulk_connection = connection_create(audience=audience, output=bulk_output, settings={})
    profile = profiles.profile_upsert(
        identities=[{"type": "email", "value": "a@x.com"}, {"type": "customer", "value": "a-1"}],
        attributes={"plan": "premium"},
    ).profile
    erasure = ProfileErasure.objects.create(requested_at=timezone.now(), source="api")
    spare_profile = profiles.profile_upsert(identities=[{"type": "email", "value": "b@x.com"}]).profile
    job = ConnectionJob.objects.create(connection=connection, kind=ConnectionJob.Kind.RECONCILE, status="done")
    return {
        "job": job.pk,
        "erasure": erasure.pk,
        "audience": audience.pk,
        "spare_audience": spare_audience.pk,
        "output": output.pk,
        "spare_output": spare_output.pk,
        "connection": connection.pk,
        "bulk_connection": bulk_connection.pk,
        "profile": profile.pk,
        "spare_profile": spare_profile.pk,
    }


def client_for(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def fill(value, objects: dict[str, int]):
    if isinstance(value, dict):
        return {key: fill(item, objects) for key, item in value.items()}
    if isinstance(value, str) and value.startswith("{") and value.endswith("}"):
        return objects[value[1:-1]]
    return value


def call(client: APIClient, endpoint: Endpoint, objects: dict[str, int]):
    url = "/api/v1" + endpoint.path.format(**objects)
    if endpoint.query:
        url += "?" + endpoint.query.format(**objects)
    body = fill(endpoint.body, objects) if endpoint.body is not None else None
    # The connection test asks Mailchimp: answered here, never reached when refused.
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.get("https://us6.api.mailchimp.com/3.0/lists/abc123", json={"name": "List", "stats": {}})
        return getattr(client, endpoint.method.lower())(url, body, format="json")


def state() -> tuple:
    """What any endpoint could write, to check that a refused request wrote nothing."""
    return (
        sorted(Audience.objects.values_list("id", "name", "description", "status", "criteria_version")),
        sorted(Output.objects.values_list("id", "name", "updated_at")),
        sorted(Connection.objects.values_list("id", "status", "upload_wait_minutes", "upload_messages")),
        Profile.objects.count(),
    )


def call_and_roll_back(client: APIClient, endpoint: Endpoint, objects: dict[str, int]):
    """The request in a savepoint rolled back after it, so each caller finds the same objects."""
    before = state()
    with transaction.atomic():
        response = call(client, endpoint, objects)
        wrote = state() != before
        transaction.set_rollback(True)
    return response, wrote


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_each_role_may_use_exactly_its_endpoints(settings, objects, endpoint):
    settings.PARTNER_API_BASE_URLS = {}
    for role in ROLES:
        response, wrote = call_and_roll_back(client_for(role_user(role)), endpoint, objects)

        if role in endpoint.allowed:
            assert response.status_code == endpoint.success, (role, getattr(response, "data", response))
        else:
            assert response.status_code == 403, (role, getattr(response, "data", response))
            assert response.json() == {
                "code": "permission_denied",
                "detail": "You do not have permission to perform this action.",
                "errors": {},
            }
            assert not wrote, role


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=lambda e: f"{e.method} {e.path}")
def test_staff_without_a_group_non_staff_with_every_permission_and_no_token_are_refused(objects, endpoint):
    for user in (role_user(None), role_user("admin", is_staff=False)):
        response, wrote = call_and_roll_back(client_for(user), endpoint, objects)
        assert (response.status_code, wrote) == (403, False), user

    response, wrote = call_and_roll_back(APIClient(), endpoint, objects)
    assert (response.status_code, wrote) == (401, False)
    assert response.json()["code"] == "not_authenticated"
    assert response["WWW-Authenticate"] == "Token"


def test_the_table_covers_every_operation_of_the_schema(db):
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = {
        (method.upper(), path)
        for path, item in schema["paths"].items()
        if path.startswith("/api/v1/")
        for method in item
    }

    assert operations == {endpoint.operation for endpoint in ENDPOINTS}


def test_every_action_of_every_viewset_declares_its_permissions():
    from config.api_urls import router

    for _, viewset, _ in router.registry:
        declared = set(viewset.permissions_by_action)
        actions = {"list", "retrieve", "create", "update", "partial_update", "destroy"} & set(dir(viewset))
        actions |= {extra.__name__ for extra in viewset.get_extra_actions()}
        assert actions == declared, viewset


def test_the_groups_are_kept_as_declared(db):
    """migrate (post_migrate) made the groups; a hand-edited group is put back by the next sync."""
    from config.roles import MARKETER as MARKETER_PERMISSIONS
    from config.roles import roles_sync

    marketer = Group.objects.get(name="marketer")
    held = {f"{p.content_type.app_label}.{p.codename}" for p in marketer.permissions.select_related("content_type")}
    assert held == MARKETER_PERMISSIONS
    marketer.permissions.clear()

    roles_sync()
    roles_sync()  # idempotent

    assert marketer.permissions.count() == len(MARKETER_PERMISSIONS)
    assert Group.objects.filter(name__in=ROLES).count() == 4


def test_options_describes_only_the_forms_the_user_may_send(objects):
    viewer = client_for(role_user("viewer")).options("/api/v1/audiences/")
    marketer = client_for(role_user("marketer")).options("/api/v1/audiences/")

    assert viewer.status_code == marketer.status_code == 200
    assert "actions" not in viewer.json()
    assert set(marketer.json()["actions"]) == {"POST"}
    assert client_for(role_user(None)).options("/api/v1/audiences/").status_code == 403


def test_the_api_root_lists_the_endpoints_to_any_staff_user(db):
    assert client_for(role_user(None)).get("/api/v1/").json()["audiences"].endswith("/api/v1/audiences/")
    assert client_for(role_user("admin", is_staff=False)).get("/api/v1/").status_code == 403
