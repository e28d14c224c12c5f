"""The OpenAPI schema: served, valid OpenAPI 3.1, complete, and browsable."""

from __future__ import annotations

import io

import pytest
import yaml
from django.core.management import call_command
from openapi_spec_validator import validate
from rest_framework.test import APIClient

SCHEMA_URL = "/api/v1/schema/"
PROFILES = "/api/v1/profiles/"


@pytest.fixture
def schema(db) -> dict:
    response = APIClient().get(SCHEMA_URL)  # public: it shows no data
    assert response.status_code == 200
    return yaml.safe_load(response.content)


def test_the_served_schema_is_valid_openapi_3_1(schema):
    assert schema["openapi"] == "3.1.0"
    validate(schema)  # openapi-spec-validator raises on the first problem


def test_drf_spectacular_generates_it_without_a_warning(db):
    # --validate checks it against the OpenAPI specification; --fail-on-warn makes warnings errors.
    call_command("spectacular", "--validate", "--fail-on-warn", stdout=io.StringIO(), stderr=io.StringIO())


def test_every_operation_describes_its_errors_in_the_one_shape(schema):
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            if path.startswith("/v2/"):
                assert {"202", "400", "401", "413", "429"} <= set(responses), (method, path)
                continue
            assert {"401", "403"} <= set(responses), (method, path)
            if "{id}" in path:
                assert "404" in responses, (method, path)
            if method in ("post", "put", "patch"):
                assert "400" in responses, (method, path)
            for status, response in responses.items():
                if status.startswith("4"):
                    shape = response["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
                    # A profile conflict is the one shape plus the profiles' ids.
                    assert shape == ("ProfileConflict" if (path, status) == (PROFILES, "409") else "Error")


def test_the_events_api_is_described_with_mparticles_batch_and_basic_auth(schema):
    events = schema["paths"]["/v2/events"]["post"]

    assert events["security"] == [{"eventsBasicAuth": []}]
    assert schema["components"]["securitySchemes"]["eventsBasicAuth"] == {
        "type": "http",
        "scheme": "basic",
        "description": "An input's key and secret (admin: Inputs, or manage.py create_input).",
    }
    body = events["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/MParticleBatch"}
    batch = schema["components"]["schemas"]["MParticleBatch"]
    assert {"events", "user_identities", "device_info", "user_attributes", "mpid", "environment"} <= set(
        batch["properties"]
    )
    assert "MParticleCustomEvent" in schema["components"]["schemas"]
    bulk = schema["paths"]["/v2/bulkevents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert bulk == {"type": "array", "items": {"$ref": "#/components/schemas/MParticleBatch"}}


def test_the_rest_api_uses_token_auth(schema):
    operation = schema["paths"]["/api/v1/audiences/"]["get"]

    assert {"tokenAuth": []} in operation["security"]
    assert schema["components"]["securitySchemes"]["tokenAuth"]["in"] == "header"


@pytest.mark.parametrize("page", ["/api/v1/docs/", "/api/v1/redoc/"])
def test_the_docs_pages_render_from_the_packaged_assets(db, page):
    response = APIClient().get(page)

    assert response.status_code == 200
    html = response.content.decode()
    assert SCHEMA_URL in html
    assert "cdn." not in html  # served by this service (drf-spectacular-sidecar), not a CDN
