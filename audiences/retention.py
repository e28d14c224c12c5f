"""How long ingested data is kept: events EVENT_RETENTION_DAYS, batch receipts a week (hourly, by beat)."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Subquery
from django.utils import timezone

from audiences.models import BatchReceipt, Event

PURGE_CHUNK = 10_000  # rows per DELETE when purging
BATCH_RECEIPT_DAYS = 7


def purge_expired_events(now: datetime | None = None) -> dict[str, int]:
    """Delete events older than EVENT_RETENTION_DAYS and batch receipts older than a week, in
    chunks, each DELETE its own short transaction. Storage only: event conditions already look
    at their recency window, and the time-based recompute moves users whose events aged out."""
    now = now or timezone.now()
    events = _delete_in_chunks(Event, "timestamp", now - timedelta(days=settings.EVENT_RETENTION_DAYS))
    receipts = _delete_in_chunks(BatchReceipt, "received_at", now - timedelta(days=BATCH_RECEIPT_DAYS))
    return {"events": events, "batch_receipts": receipts}


def _delete_in_chunks(model, field: str, before: datetime) -> int:
    deleted = 0
    while True:
        # The ids stay in the database (a LIMITed subquery), not in Python.
        chunk = model.objects.filter(**{f"{field}__lt": before}).order_by().values("pk")[:PURGE_CHUNK]
        count, _ = model.objects.filter(pk__in=Subquery(chunk)).delete()
        deleted += count
        if count < PURGE_CHUNK:
            return deleted
