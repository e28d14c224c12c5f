"""How the admin writes numbers and times for people: thousands separators, and times to the second with
how long ago they were ("2026-11-29 14:03:12 UTC, 3 min ago"). One place, used by every admin page."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

EMPTY = "—"


def number(value: object) -> str:
    """1204 -> "1,204"; None -> "—"; anything else as is."""
    if value is None:
        return EMPTY
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


def ago(moment: datetime, now: datetime | None = None) -> str:
    """How long ago (or, for a future moment, in how long): "just now", "42 s ago", "3 min ago", "in 5 min"."""
    seconds = int(((now or timezone.now()) - moment).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 5:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min"), (1, "s")):
        if seconds >= size:
            amount = f"{seconds // size} {unit}"
            return f"in {amount}" if future else f"{amount} ago"
    return "just now"


def when(moment: datetime | None, now: datetime | None = None) -> str:
    """A time to the second, in UTC, with how long ago: "2026-11-29 14:03:12 UTC (3 min ago)"."""
    if moment is None:
        return EMPTY
    return f"{timezone.localtime(moment):%Y-%m-%d %H:%M:%S %Z} ({ago(moment, now)})"
