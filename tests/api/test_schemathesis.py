"""schemathesis against the service's own OpenAPI schema (/api/v1/schema/), in process (WSGI).

Every operation of the REST API and the Events API gets generated requests, valid and invalid
(schemathesis' "all" mode), with a fixed seed and a bounded number of examples, as a superuser
(every code path open) and an input's key and secret for /v2/. The checks: no answer is a 5xx, and
every answer matches the schema: a documented status code, content type, headers and body.

Path ids are random (mostly 404s) or, for the even ones hypothesis draws, the id of a real object
made for the test, so the answers for existing audiences, outputs, connections and profiles are
checked too. The request examples of the schema are sent as well (schemathesis' examples phase).
"""

from __future__ import annotations

import base64
import re

import pytest
import redis
import schemathesis
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audiences import profiles
from audiences import services as audience_services
from audiences.inputs import input_create
from audiences.models import Audience
from config import ratelimit
from config.wsgi import application
from forwarding.lifecycle import connection_create
from outputs.services import output_create
from tests.conftest import service_missing
from tests.fixtures.api import MAILCHIMP_KEY, PREMIUM

# Bounded and reproducible: the same requests on every run.
CONFIG = SchemathesisConfig.from_dict(
    {
        "seed": 20261129,
        "suppress-health-check": ["too_slow", "filter_too_much", "data_too_large"],
        "generation": {"mode": "all", "max-examples": 25, "deterministic": True, "database": "none"},
        "phases": {"coverage": {"enabled": True}, "stateful": {"enabled": False}},
        # The coverage phase walks every property of mParticle's batch schema: thousands of requests (minutes).
        # The Events API gets the fuzzing phase here; tests/events_api keeps what the coverage phase found.
        "operations": [{"include-path-regex": "^/v2/", "phases": {"coverage": {"enabled": False}}}],
    }
)
schema = schemathesis.openapi.from_wsgi("/api/v1/schema/", application, config=CONFIG)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
RESOURCE = re.compile(r"^/api/v1/(audiences|outputs|connections|profiles)/\{id\}/")


@pytest.fixture
def credentials(db, admin_user) -> dict[str, str]:
    """Real objects for the generated ids to hit, and the two kinds of credentials."""
    audience = audience_services.audience_create(name="Premium", criteria=PREMIUM, status=Audience.Status.ACTIVE)
    output = output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": MAILCHIMP_KEY})
    connection = connection_create(audience=audience, output=output, settings={"list_id": "abc123"})
    profile = profiles.profile_upsert(
        identities=[{"type": "email", "value": "a@x.com"}], attributes={"plan": "premium"}
    ).profile
    events_input, secret = input_create("Schemathesis")
    basic = base64.b64encode(f"{events_input.key}:{secret}".encode()).decode()
    return {
        "audiences": audience.pk,
        "outputs": output.pk,
        "connections": connection.pk,
        "profiles": profile.pk,
        "token": f"Token {Token.objects.create(user=admin_user).key}",
        "basic": f"Basic {basic}",
    }


@pytest.fixture(autouse=True)
def _keep_the_test_transaction():
    """The WSGI handler closes the database connection after each request (close_old_connections),
    which would end the test's transaction; Django's test client disconnects it in the same way."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


@pytest.fixture(autouse=True)
def _no_partner_calls(settings):
    # POST /connections/{id}/test/ asks the partner: point it at a closed local port, so the answer is
    # the partner's refusal (200 {"ok": false}) and nothing leaves the machine.
    settings.PARTNER_API_BASE_URLS = {"mailchimp": "http://127.0.0.1:9/3.0"}


@schema.parametrize()
# The fixtures are made once per operation, on purpose: its examples share (and may change) them.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_every_answer_matches_the_schema(case, credentials):
    resource = RESOURCE.match(case.path)
    generated = (case.path_parameters or {}).get("id")
    if resource and isinstance(generated, int) and generated % 2 == 0:
        # Half the generated ids, as hypothesis draws them, become the real object's.
        case.path_parameters["id"] = credentials[resource.group(1)]
    authorization = credentials["basic"] if case.path.startswith("/v2/") else credentials["token"]

    case.call_and_validate(headers={"Authorization": authorization}, checks=CHECKS)


# --- answers generated requests rarely reach: the Events API's limits (config/ratelimit.py) ---------


@pytest.fixture
def limits_clock(monkeypatch, settings) -> None:
    """The limits' Redis, required, and their clock stopped (nothing refills while the test runs)."""
    try:
        redis.Redis.from_url(settings.RATE_LIMIT_REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {settings.RATE_LIMIT_REDIS_URL}: {exc}")
    monkeypatch.setattr(ratelimit, "clock", lambda: 1_800_000_000.0)
    monkeypatch.setattr(ratelimit, "_redis_paused_until", 0.0)


def send_events(authorization: str, source_request_id: str):
    case = schema["/v2/events"]["POST"].Case(
        body={
            "environment": "production",
            "source_request_id": source_request_id,
            "user_identities": {"customer_id": "c-1"},
            "events": [],
        },
        headers={"Authorization": authorization},
    )
    return case, case.call()


def test_an_input_over_its_rate_gets_the_documented_429(credentials, limits_clock, settings):
    settings.EVENTS_API_RATE_LIMIT, settings.EVENTS_API_RATE_BURST = 1, 1
    assert send_events(credentials["basic"], "first")[1].status_code == 202

    case, response = send_events(credentials["basic"], "second")

    assert (response.status_code, response.headers["x-mp-rate-limit-exceeded"]) == (429, ["feed"])
    case.validate_response(response, checks=CHECKS)


def test_a_throttled_authentication_gets_the_documented_429(credentials, limits_clock, settings):
    settings.EVENTS_API_AUTH_FAILURES_PER_CLIENT = 1
    wrong = "Basic " + base64.b64encode(b"no-such-key:no-such-secret").decode()
    assert send_events(wrong, "first")[1].status_code == 401

    case, response = send_events(wrong, "second")

    assert response.status_code == 429
    assert response.json()["errors"][0]["code"] == "authentication_throttled"
    case.validate_response(response, checks=CHECKS)
