"""What the admin says about a connection's state, in one place, so every page says the same thing and
says only what is true: the status with its reason and since when, what the pending changes are waiting
for (retrying after an error only while the connection sends; held while it is paused or faulted), and
what Resume did. The facts come from connections/status.py and forwarding/selectors.py, so the words
follow whatever the delivery engine records."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.utils import timezone

from config.display import ago, number, when
from connections import status
from connections.models import Connection
from forwarding.bulk import UploadStatus, UploadSummary
from forwarding.models import PendingChange, Upload
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


# --- a bulk connection's uploads (forwarding/bulk.py) ----------------------------------------------------


def _minutes(wait: timedelta) -> str:
    minutes = int(wait.total_seconds() // 60)
    if minutes % 60 == 0 and minutes >= 60:
        hours = minutes // 60
        return f"{hours} hour{'s' if hours != 1 else ''}"
    return f"{number(minutes)} minute{'s' if minutes != 1 else ''}"


def upload_criteria_text(state: UploadStatus) -> str:
    """The criteria in force, and whether they are the partner's: "wait 30 minutes or 5 messages, whichever
    comes first (the partner's defaults)"."""
    criteria, default = state.criteria, state.default
    source = (
        "the partner's defaults"
        if criteria == default
        else f"set for this connection; the partner's: {_minutes(default.wait)} or {number(default.messages)} messages"
    )
    return f"wait {_minutes(criteria.wait)} or {number(criteria.messages)} messages, whichever comes first ({source})"


def upload_backlog_text(state: UploadStatus) -> str:
    if not state.waiting:
        return "nothing waiting"
    changes = f"{number(state.waiting)} change{'s' if state.waiting != 1 else ''}"
    return f"{changes}, the oldest since {when(state.oldest_waiting_since)}"


def next_upload_text(connection: Connection, state: UploadStatus) -> str:
    if connection.status in HELD:
        return f"none: uploads are {HELD[connection.status]}"
    if state.next_upload_due_at is None:
        return (
            f"{_minutes(state.criteria.wait)} after the next change (or at {number(state.criteria.messages)} changes)"
        )
    interval = f"beat looks every {state.check_interval_seconds} s"
    if state.waiting >= state.criteria.messages:
        return f"due now: {number(state.criteria.messages)} changes wait"
    messages = number(state.criteria.messages)
    return f"due {when(state.next_upload_due_at)} by time ({interval}), or at once at {messages} changes"


def last_upload_text(upload: UploadSummary | None) -> str:
    if upload is None:
        return "never"
    trigger = dict(Upload.Trigger.choices).get(upload.trigger, upload.trigger)
    counts = f"{number(upload.sent)} sent, {number(upload.delivered)} delivered, {number(upload.rejected)} rejected" + (
        f", {number(upload.retried)} to retry" if upload.retried else ""
    )
    if upload.running:
        return f"uploading since {when(upload.started_at)} ({trigger}): {counts} so far"
    outcome = dict(Upload.Outcome.choices).get(upload.outcome, upload.outcome)
    detail = f": {upload.detail}" if upload.detail else ""
    finished = when(upload.finished_at) if upload.finished_at else "never finished"
    return f"{outcome}{detail}. Started {when(upload.started_at)} ({trigger}), finished {finished}; {counts}"
