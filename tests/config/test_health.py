"""/healthz and /readyz (config/health.py); with real worker and beat processes: tests/e2e/test_health.py."""

from __future__ import annotations

import pytest


def test_healthz_answers_without_asking_anything_even_to_an_unknown_host(client):
    response = client.get("/healthz", HTTP_HOST="10.1.2.3:8000")  # a probe addresses the pod's IP
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


@pytest.mark.django_db
def test_readyz_is_503_and_names_what_is_missing_when_no_worker_or_beat_ever_ran(client, settings):
    response = client.get("/readyz", HTTP_HOST="10.1.2.3:8000")
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False
    assert body["checks"]["database"] == {"ok": True}
    assert body["checks"]["broker"] == {"ok": True}
    assert body["checks"]["beat"] == {"ok": False, "error": "no heartbeat"}
    assert body["checks"]["worker"] == {"ok": False, "error": "no heartbeat"}
