from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

from audiences.inputs import input_create


@pytest.fixture
def credentials(db) -> tuple[str, str]:
    instance, secret = input_create("web backend")
    return instance.key, secret


@pytest.fixture
def post(client, credentials) -> Callable[..., Any]:
    """POST JSON (or raw bytes) to the Events API with the input's Basic credentials."""

    def send(path: str, body: Any, *, auth: tuple[str, str] | None = credentials, **headers: str):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        if auth is not None:
            token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
            headers.setdefault("HTTP_AUTHORIZATION", f"Basic {token}")
        return client.generic("POST", path, raw, content_type="application/json", **headers)

    return send


def batch(**fields: Any) -> dict[str, Any]:
    """A minimal valid batch; keyword arguments replace or add keys."""
    return {"environment": "production", "user_identities": {"customer_id": "c-1"}, "events": [], **fields}
