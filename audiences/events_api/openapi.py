"""The Events API in OpenAPI 3.1 terms, added to the service's schema by add_events_api, a drf-spectacular
postprocessing hook (SPECTACULAR_SETTINGS in config/settings.py).

The request bodies are mParticle's own batch schema, mparticle.inbound.eventsapi.schema.json beside
this module (JSON Schema draft-07, as mParticle publishes it: https://docs.mparticle.com/schema/),
its definitions moved under components/schemas with an "MParticle" prefix. What we check on top of
it, and what we let through, is said in parsing.py; the answers below are views.py's.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from audiences.events_api.parsing import ENVIRONMENTS

BATCH_SCHEMA_FILE = Path(__file__).with_name("mparticle.inbound.eventsapi.schema.json")
PREFIX = "MParticle"
SECURITY_SCHEME = "eventsBasicAuth"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _rewrite_refs(node: Any) -> Any:
    if isinstance(node, dict):
        return {
            key: (
                f"#/components/schemas/{PREFIX}{value.removeprefix('#/definitions/')}"
                if key == "$ref"
                else _rewrite_refs(value)
            )
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_rewrite_refs(item) for item in node]
    return node


@cache
def batch_schemas() -> dict[str, Any]:
    """mParticle's batch schema as components: MParticleBatch and every definition it refers to."""
    document = json.loads(BATCH_SCHEMA_FILE.read_text())
    definitions = document.pop("definitions")
    for key in ("$id", "$schema"):
        document.pop(key, None)
    # mParticle's default environment, "unknown", is missing from its enum; we take it (parsing.ENVIRONMENTS),
    # and a default outside the enum makes the schema invalid.
    document["properties"]["environment"]["enum"] = sorted(ENVIRONMENTS)
    schemas = {f"{PREFIX}{name}": _rewrite_refs(schema) for name, schema in definitions.items()}
    schemas[f"{PREFIX}Batch"] = _rewrite_refs(document)
    return schemas


ERROR_LIST = {
    "type": "array",
    "items": {
        "type": "object",
        "properties": {
            "code": {"type": "string", "description": "e.g. malformed_json, unauthorized, rate_limited"},
            "path": {"type": "string", "description": "JSON path of the problem: events[1].event_type, [3].mpid"},
            "message": {"type": "string"},
        },
        "required": ["message"],
    },
}


def events_api_components() -> tuple[dict[str, Any], dict[str, Any]]:
    """(schemas, security schemes) the Events API's paths refer to."""
    schemas = {
        **batch_schemas(),
        "EventsApiErrors": {
            "type": "object",
            "description": "mParticle's error shape.",
            "properties": {"errors": ERROR_LIST},
            "required": ["errors"],
        },
        "EventsAccepted": {
            "type": "object",
            "properties": {
                "accepted": {"type": "boolean", "const": True},
                "duplicate": {"type": "boolean", "description": "Its source_request_id was received before."},
            },
            "required": ["accepted", "duplicate"],
        },
        "BulkEventsAccepted": {
            "type": "object",
            "properties": {
                "accepted": {"type": "array", "items": {"type": "integer"}, "description": "Indexes of stored batches."}
            },
            "required": ["accepted"],
        },
        "BulkEventsRefused": {
            "type": "object",
            "description": "Some batches refused (named by index in each error's path); the accepted ones are stored.",
            "properties": {
                "accepted": {"type": "array", "items": {"type": "integer"}},
                "errors": ERROR_LIST,
            },
            "required": ["errors"],
        },
    }
    security = {
        SECURITY_SCHEME: {
            "type": "http",
            "scheme": "basic",
            "description": "An input's key and secret (admin: Inputs, or manage.py create_input).",
        }
    }
    return schemas, security


def _errors(description: str, **headers: Any) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("EventsApiErrors")}},
    }
    if headers:
        response["headers"] = headers
    return response


# What the mParticle SDKs send for the tutorial's "Destination Intro" video.
EXAMPLE_BATCH = {
    "environment": "production",
    "source_request_id": "3f1c2a2e-5b7d-4e0f-9d3c-1a2b3c4d5e6f",
    "user_identities": {"customer_id": "traveller-007", "email": "traveller007@example.com"},
    "user_attributes": {"status": "Premium"},
    "events": [
        {
            "event_type": "custom_event",
            "data": {
                "event_name": "Destination Intro",
                "custom_event_type": "media",
                "custom_attributes": {"city": "Paris"},
            },
        }
    ],
}


def _operation(
    summary: str, body: dict[str, Any], example: Any, accepted: str, refused: str, description: str
) -> dict[str, Any]:
    return {
        "post": {
            "operationId": summary.lower().replace(" ", "_"),
            "summary": summary,
            "description": description,
            "tags": ["events"],
            "security": [{SECURITY_SCHEME: []}],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": body, "examples": {"Destination Intro": {"value": example}}}
                },
            },
            "responses": {
                "202": {"description": "Stored.", "content": {"application/json": {"schema": _ref(accepted)}}},
                "400": {
                    "description": "Refused, with the path of every problem.",
                    "content": {"application/json": {"schema": _ref(refused)}},
                },
                "401": _errors(
                    "No valid input key and secret.",
                    **{"WWW-Authenticate": {"schema": {"type": "string"}}},
                ),
                "413": _errors("The request is larger than EVENTS_API_MAX_BYTES (256 KB by default)."),
                "429": _errors(
                    "Too many requests: the input is over its rate limit, counted in batches (with "
                    "X-mp-rate-limit-exceeded: feed, as mParticle answers), or this client or key failed to "
                    "authenticate too often (code authentication_throttled). Wait Retry-After seconds.",
                    **{
                        "Retry-After": {"schema": {"type": "integer"}, "required": True},
                        "X-mp-rate-limit-exceeded": {"schema": {"type": "string", "enum": ["feed"]}},
                    },
                ),
            },
        }
    }


def events_api_paths() -> dict[str, Any]:
    return {
        "/v2/events": _operation(
            "Send events",
            _ref(f"{PREFIX}Batch"),
            EXAMPLE_BATCH,
            "EventsAccepted",
            "EventsApiErrors",
            "One batch. Nothing of a refused batch is written; a repeated source_request_id is accepted "
            "and not stored twice.",
        ),
        "/v2/bulkevents": _operation(
            "Send bulk events",
            {"type": "array", "items": _ref(f"{PREFIX}Batch")},
            [EXAMPLE_BATCH],
            "BulkEventsAccepted",
            "BulkEventsRefused",
            "A JSON array of batches; each stands alone: good ones are stored and listed in `accepted`, "
            "bad ones named by index in the errors' paths.",
        ),
    }


def add_events_api(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the Events API beside the REST API."""
    result.setdefault("paths", {}).update(events_api_paths())
    components = result.setdefault("components", {})
    schemas, security_schemes = events_api_components()
    components.setdefault("schemas", {}).update(schemas)
    components.setdefault("securitySchemes", {}).update(security_schemes)
    result.setdefault("tags", []).append(
        {"name": "events", "description": "mParticle-compatible Events API (HTTP Basic: an input's key and secret)."}
    )
    return result
