"""Daily history of each audience: its size at the end of each day (UTC), and who entered and left that day.

Computed from the change log, set-wise: one aggregate of the change log per (audience, day, kind) and one
count of the membership per audience, then one upsert of a row per (audience, day). A past day's size is
not remembered but derived: the size now, minus what entered after that day, plus what left after it (the
change log records every entry and exit; audiences/membership/ledger.py is its one writer). So a missed
day is filled in by the next run over enough days (`manage.py snapshot_history --days 30`), and running
again only rewrites the same figures. Beat runs it hourly (config/settings.py), keeping today's row fresh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

from django.db.models import Count, Exists, OuterRef, Q
from django.db.models.functions import TruncDate
from django.utils import timezone
from django.utils.safestring import SafeString

from audiences.models import Audience, AudienceMembership, AudienceSnapshot, MembershipChange
from config.charts import Series, bar_chart, line_chart, no_history_note

AUDIENCE_CHUNK = 200  # audiences per round of queries (and per step of a progress bar)
MAX_DAYS = 366


@dataclass(frozen=True)
class DayFigures:
    day: date
    size: int
    adds: int
    drops: int


def history_days(days: int, now: datetime) -> list[date]:
    """The last `days` days (UTC), oldest first, today included."""
    today = now.astimezone(UTC).date()
    return [today - timedelta(days=n) for n in range(days - 1, -1, -1)]


def day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def snapshot_audiences(
    *, days: int = 2, now: datetime | None = None, progress: Callable[[int], None] | None = None
) -> int:
    """Write the snapshots of the last `days` days of every audience that is active or changed in them.
    Returns the rows written. `progress(n)` is told of each chunk of n audiences done."""
    now = now or timezone.now()
    window = history_days(days, now)
    since = day_start(window[0])
    # Active audiences, and any other that changed in the window: one index probe per audience on the
    # change log's (audience, at) index, not a scan of the window's changes.
    changed = MembershipChange.objects.filter(audience=OuterRef("pk"), at__gte=since)
    audience_ids = list(
        Audience.objects.filter(Q(status=Audience.Status.ACTIVE) | Exists(changed))
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    written = 0
    for start in range(0, len(audience_ids), AUDIENCE_CHUNK):
        chunk = audience_ids[start : start + AUDIENCE_CHUNK]
        figures = audience_day_figures(chunk, window, now=now)
        rows = [
            AudienceSnapshot(audience_id=audience_id, day=f.day, size=f.size, adds=f.adds, drops=f.drops, taken_at=now)
            for audience_id, per_day in figures.items()
            for f in per_day
        ]
        AudienceSnapshot.objects.bulk_create(
            rows,
            update_conflicts=True,
            unique_fields=["audience", "day"],
            update_fields=["size", "adds", "drops", "taken_at"],
        )
        written += len(rows)
        if progress:
            progress(len(chunk))
    return written


def audience_day_figures(
    audience_ids: Iterable[int], window: list[date], *, now: datetime
) -> dict[int, list[DayFigures]]:
    """Per audience, the figures of each day of `window` (consecutive days, oldest first, ending today):
    two aggregate queries, whatever the sizes."""
    ids = list(audience_ids)
    sizes = dict(
        AudienceMembership.objects.filter(audience_id__in=ids)
        .values_list("audience_id")
        .annotate(n=Count("pk"))
        .values_list("audience_id", "n")
    )
    changes = (
        MembershipChange.objects.filter(audience_id__in=ids, at__gte=day_start(window[0]), at__lte=now)
        .annotate(day=TruncDate("at", tzinfo=UTC))
        .values("audience_id", "day")
        .annotate(
            adds=Count("pk", filter=Q(kind=MembershipChange.Kind.ENTERED)),
            drops=Count("pk", filter=Q(kind=MembershipChange.Kind.LEFT)),
        )
        .values_list("audience_id", "day", "adds", "drops")
    )
    per_day: dict[int, dict[date, tuple[int, int]]] = defaultdict(dict)
    for audience_id, day, adds, drops in changes:
        per_day[audience_id][day] = (adds, drops)
    figures: dict[int, list[DayFigures]] = {}
    for audience_id in ids:
        size = sizes.get(audience_id, 0)
        rows = []
        # Newest first: the end of today is now; each earlier day ends before the later day's changes.
        for day in reversed(window):
            adds, drops = per_day[audience_id].get(day, (0, 0))
            rows.append(DayFigures(day=day, size=max(size, 0), adds=adds, drops=drops))
            size -= adds - drops
        figures[audience_id] = rows[::-1]
    return figures


def audience_history(
    audience_id: int, *, days: int = 30, now: datetime | None = None
) -> list[tuple[date, DayFigures | None]]:
    """The stored snapshots of the last `days` days, oldest first; None for a day without one (before the
    audience existed, or before snapshots were taken)."""
    window = history_days(days, now or timezone.now())
    stored = {
        s.day: DayFigures(day=s.day, size=s.size, adds=s.adds, drops=s.drops)
        for s in AudienceSnapshot.objects.filter(audience_id=audience_id, day__gte=window[0], day__lte=window[-1])
    }
    return [(d, stored.get(d)) for d in window]


def audience_charts(audience_id: int, *, days: int = 30, now: datetime | None = None) -> dict[str, SafeString]:
    """The audience page's charts: its size, and its adds and drops, per day (inline SVG, config/charts.py)."""
    history = audience_history(audience_id, days=days, now=now)
    if all(figures is None for _, figures in history):
        return {"none": no_history_note()}
    window = [day for day, _ in history]
    size = Series("size", [f.size if f else None for _, f in history], "#417690")
    adds = Series("adds", [f.adds if f else None for _, f in history], "#3c9a5f")
    drops = Series("drops", [f.drops if f else None for _, f in history], "#ba2121")
    return {
        "size": line_chart(window, size, title=f"Audience size per day, last {days} days"),
        "changes": bar_chart(window, [adds, drops], title=f"Adds and drops per day, last {days} days"),
    }
