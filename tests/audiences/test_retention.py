"""How long ingested data is kept (audiences/retention.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.conf import settings

from audiences import retention
from audiences.models import BatchReceipt, Event, Input, Profile

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_purge_deletes_expired_events_and_receipts_in_chunks(monkeypatch):

    monkeypatch.setattr(retention, "PURGE_CHUNK", 2)
    now = T0 + timedelta(days=100)
    profile = Profile.objects.create(attributes={})
    ages = [31, 30.5, 45, 60, 90, 29, 1]  # days; the retention is 30
    for age in ages:
        at = now - timedelta(days=age)
        Event.objects.create(profile=profile, event_type="custom_event", name="e", timestamp=at, received_at=at)
    source = Input.objects.create(name="web", key="k", secret_sha256="0" * 64)
    for index, age in enumerate([8, 6, 10]):
        BatchReceipt.objects.create(input=source, source_request_id=str(index), received_at=now - timedelta(days=age))

    assert settings.EVENT_RETENTION_DAYS == 30
    assert retention.purge_expired_events(now=now) == {"events": 5, "batch_receipts": 2}
    kept = sorted(round((now - t).total_seconds() / 86400) for t in Event.objects.values_list("timestamp", flat=True))
    assert kept == [1, 29]
    assert list(BatchReceipt.objects.values_list("source_request_id", flat=True)) == ["1"]
    assert retention.purge_expired_events(now=now) == {"events": 0, "batch_receipts": 0}
