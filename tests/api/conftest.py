"""Fixtures for the API tests: an admin's token client and objects made through the services.

No network and no broker: transaction.on_commit callbacks (the Celery doorbells) never run
inside the `db` fixture's transaction.
"""

from __future__ import annotations

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from audiences import services as audience_services
from audiences.models import Audience
from connections import services as connection_services
from connections.models import Connection
from outputs import services as output_services
from outputs.models import Output

# A well-formed Mailchimp key: data center "us6" after the dash.
MAILCHIMP_KEY = "0123456789abcdef0123456789abcdef-us6"
PREMIUM = {"attribute": "plan", "operator": "equals", "value": "premium"}


def errors(response) -> dict[str, list[str]]:
    """The `errors` of a 400 in the API's one error shape (config/api_errors.py), checking the shape."""
    body = response.json()
    assert set(body) == {"code", "detail", "errors"}, body
    assert body["code"] == "invalid", body
    return body["errors"]


@pytest.fixture
def api(db, admin_user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=admin_user).key}")
    return client


@pytest.fixture
def anonymous(db) -> APIClient:
    return APIClient()


@pytest.fixture
def audience(db) -> Audience:
    """Active, so a profile upsert evaluates it (its recompute task never runs here)."""
    return audience_services.audience_create(name="Premium", criteria=PREMIUM, status=Audience.Status.ACTIVE)


@pytest.fixture
def output(db) -> Output:
    return output_services.output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})


@pytest.fixture
def connection(audience: Audience, output: Output) -> Connection:
    return connection_services.connection_create(audience=audience, output=output, settings={"list_id": "abc123"})
