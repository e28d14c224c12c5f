"""What the admin says about a connection's state, in one place, so every page says the same thing and
says only what is true: the status with its reason and since when, what the pending changes are waiting
for (retrying after an error only while the connection sends; held while it is paused or faulted), and
what Resume did. The facts come from connections/status.py and forwarding/selectors.py, so the words
follow whatever the delivery engine records."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from config.display import ago, number, when
from connections import status
from connections.models import Connection
from forwarding.models import PendingChange
from forwarding.selectors import ConnectionStats

Status = Connection.Status
STATUS_WORDS = {
    Status.SENDING: "Sending",
    Status.PAUSED: "Paused",
    Status.FAULTED: "Faulted",
    Status.ENDING: "Being deleted",
}
HELD = {
    Status.PAUSED: "held while the connection is paused",
    Status.FAULTED: "held until the connection is resumed (it is faulted)",
    Status.ENDING: "dropped: the connection is being deleted",
}


def status_word(connection: Connection) -> str:
    return STATUS_WORDS.get(connection.status, str(connection.status).capitalize())


def status_detail(connection: Connection) -> str:
    """The reason and since when: "since 2026-11-29 14:03:12 UTC (3 min ago): HTTP 401: API Key Invalid"."""
    parts = []
    if connection.status_changed_at:
        parts.append(f"since {when(connection.status_changed_at)}")
    if connection.status_reason:
        parts.append(connection.status_reason)
    detail = ": ".join(parts)
    waiting = backoff_detail(connection)
    return f"{detail}. {waiting}" if detail and waiting else detail or waiting


def backoff_detail(connection: Connection, now: datetime | None = None) -> str:
    """The connection's wait as a whole (forwarding/recovery.py), while there is one."""
    now = now or timezone.now()
    if not connection.throttled_until or connection.throttled_until <= now:
        return ""
    if connection.failures and connection.failing_since:
        calls = f"{connection.failures} call{'s' if connection.failures != 1 else ''}"
        return (
            f"The partner failed {calls} in a row since {when(connection.failing_since)}; "
            f"next try {ago(connection.throttled_until, now)}."
        )
    return f"Throttled by the partner (Retry-After): next try {ago(connection.throttled_until, now)}."


def pending_summary(connection: Connection, stats: ConnectionStats) -> str:
    """What the pending changes wait for, as their connection's status makes true."""
    if not stats.pending:
        return "none"
    if connection.status in HELD:
        return f"{number(stats.pending)}, {HELD[connection.status]}"
    if stats.retrying:
        return f"{number(stats.pending)}, of which {number(stats.retrying)} retrying after an error"
    return f"{number(stats.pending)}, being sent"


def pending_change_state(change: PendingChange, connection: Connection, now: datetime | None = None) -> str:
    """One pending change's state, agreeing with its last attempt and its connection's status."""
    if connection.status in HELD:
        return HELD[connection.status].capitalize()
    now = now or timezone.now()
    due = change.next_attempt_at <= now
    if not change.attempts:
        return "Waiting to be sent" if due else f"Scheduled {ago(change.next_attempt_at, now)}"
    tried = f"tried {change.attempts} time{'s' if change.attempts != 1 else ''}"
    next_try = "due now" if due else f"next try {ago(change.next_attempt_at, now)}"
    return f"Retrying ({tried}, {next_try}): {change.last_error}" if change.last_error else f"Retrying ({tried})"


def resume_refused(partner_words: str) -> str:
    return (
        f"Still faulted, not resumed: the partner still answers “{partner_words}”. "
        "Fix the cause (the output's settings or the partner's list), then resume."
    )


def resume_outcome(connection: Connection, due: int) -> tuple[bool, str]:
    """(resumed, what to tell the user) once connection_resume has run, from the status read again."""
    if status.delivers(connection.status):
        return True, f"Resumed: {number(due)} pending change{'s' if due != 1 else ''} due now."
    detail = status_detail(connection)
    return False, f"Not resumed: the connection is {status_word(connection).lower()}{f', {detail}' if detail else ''}."
