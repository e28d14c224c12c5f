"""Daily history of each connection: identities delivered and rejected per day (UTC), set-wise.

One aggregate of the delivery attempts per (connection, day) and one upsert; the days come from
audiences/history.py so both histories share their calendar. Run with the audiences' snapshots by
`manage.py snapshot_history` and hourly by beat (forwarding.tasks.snapshot_history)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime

from django.db.models import Sum
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.safestring import SafeString

from audiences.history import day_start, history_days, snapshot_audiences
from config.charts import Series, bar_chart, no_history_note
from connections.models import Connection
from forwarding.models import ConnectionSnapshot, DeliveryAttempt


def snapshot_connections(*, days: int = 2, now: datetime | None = None) -> int:
    """Write the snapshots of the last `days` days of every connection (a day without attempts: zeros).
    Returns the rows written."""
    now = now or timezone.now()
    window = history_days(days, now)
    sums = {
        (connection_id, day): (delivered or 0, rejected or 0)
        for connection_id, day, delivered, rejected in DeliveryAttempt.objects.filter(
            kind="batch", at__gte=day_start(window[0]), at__lte=now
        )
        .annotate(day=TruncDate("at", tzinfo=UTC))
        .values("connection_id", "day")
        .annotate(delivered=Sum("delivered"), rejected=Sum("rejected"))
        .values_list("connection_id", "day", "delivered", "rejected")
    }
    rows = [
        ConnectionSnapshot(
            connection_id=connection_id,
            day=day,
            delivered=sums.get((connection_id, day), (0, 0))[0],
            rejected=sums.get((connection_id, day), (0, 0))[1],
            taken_at=now,
        )
        for connection_id in Connection.objects.values_list("pk", flat=True)
        for day in window
    ]
    ConnectionSnapshot.objects.bulk_create(
        rows,
        update_conflicts=True,
        unique_fields=["connection", "day"],
        update_fields=["delivered", "rejected", "taken_at"],
    )
    return len(rows)


def snapshot_history(
    *, days: int = 2, now: datetime | None = None, progress: Callable[[int], None] | None = None
) -> dict[str, int]:
    """Both histories: every audience's (progress told per chunk of audiences), then every connection's."""
    now = now or timezone.now()
    audiences = snapshot_audiences(days=days, now=now, progress=progress)
    connections = snapshot_connections(days=days, now=now)
    return {"audience_days": audiences, "connection_days": connections}


def connection_history(
    connection_id: int, *, days: int = 30, now: datetime | None = None
) -> list[tuple[date, ConnectionSnapshot | None]]:
    """The stored snapshots of the last `days` days, oldest first; None for a day without one."""
    window = history_days(days, now or timezone.now())
    stored = {
        s.day: s
        for s in ConnectionSnapshot.objects.filter(connection_id=connection_id, day__gte=window[0], day__lte=window[-1])
    }
    return [(d, stored.get(d)) for d in window]


def connection_charts(connection_id: int, *, days: int = 30, now: datetime | None = None) -> dict[str, SafeString]:
    """The connection page's chart: identities delivered and rejected per day (inline SVG)."""
    history = connection_history(connection_id, days=days, now=now)
    if all(snapshot is None for _, snapshot in history):
        return {"none": no_history_note()}
    window = [day for day, _ in history]
    delivered = Series("delivered", [s.delivered if s else None for _, s in history], "#3c9a5f")
    rejected = Series("rejected", [s.rejected if s else None for _, s in history], "#ba2121")
    return {
        "deliveries": bar_chart(
            window, [delivered, rejected], title=f"Delivered and rejected per day, last {days} days"
        )
    }
