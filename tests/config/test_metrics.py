"""/metrics (config/metrics.py): the token, and the figures counted outside forwarding."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from audiences import tasks
from audiences.inputs import input_create
from tests import factories
from tests.fixtures.prometheus import sample as value
from tests.fixtures.prometheus import scrape

pytestmark = pytest.mark.django_db


def test_metrics_want_the_token_when_one_is_set(client, settings):
    settings.METRICS_TOKEN = "s3cret-token"
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret-token")
    assert response.status_code == 200
    assert b"af_pending_changes" in response.content


def test_events_api_batches_and_errors_are_counted(client):
    input_, secret = input_create("Metrics")
    auth = "Basic " + base64.b64encode(f"{input_.key}:{secret}".encode()).decode()
    good = {"environment": "production", "user_identities": {"email": "m@x.com"}, "events": []}
    before = scrape(client, HTTP_HOST="10.0.0.7:8000")
    client.post("/v2/events", good, content_type="application/json", HTTP_AUTHORIZATION=auth)
    client.post("/v2/bulkevents", [good, {"events": "no"}], content_type="application/json", HTTP_AUTHORIZATION=auth)
    client.post("/v2/events", good, content_type="application/json", HTTP_AUTHORIZATION="Basic bm86bm8=")
    after = scrape(client, HTTP_HOST="10.0.0.7:8000")

    def grew(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("af_events_api_batches_total", result="accepted") == 2
    assert grew("af_events_api_batches_total", result="refused") == 1
    assert grew("af_events_api_errors_total", status="400", code="invalid") == 1
    assert grew("af_events_api_errors_total", status="401", code="unauthorized") == 1


def test_membership_changes_by_audience_and_recompute_durations_are_counted(
    client, rings, django_capture_on_commit_callbacks
):
    before = scrape(client, HTTP_HOST="10.0.0.7:8000")
    audience = factories.active_audience()
    with django_capture_on_commit_callbacks(execute=True):  # counted once committed
        factories.parisian("a@x.com")
        factories.profile(email="a@x.com", status="Free")
    tasks.recompute_audience(audience.pk)
    after = scrape(client, HTTP_HOST="10.0.0.7:8000")
    label = str(audience.pk)  # SQLite may give an earlier test's audience id again: counted since `before`
    for change in ("entered", "left"):
        counted = value(after, "af_membership_changes_total", audience=label, change=change)
        assert counted - value(before, "af_membership_changes_total", audience=label, change=change) == 1
    assert (
        value(after, "af_recompute_duration_seconds_count") - value(before, "af_recompute_duration_seconds_count") == 1
    )


def test_the_grafana_dashboard_uses_only_metrics_the_service_exposes(client, rings):
    factories.connect(factories.active_audience(), factories.mailchimp_output())  # the outbox gauges have rows
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\baf_[a-z_]+", target["expr"])
    }
    response = client.get("/metrics")
    families = {f.name for f in text_string_to_metric_families(response.content.decode())}
    exposed = {f"{name}{suffix}" for name in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    assert used and used <= exposed, used - exposed
