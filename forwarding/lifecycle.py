"""A connection's life cycle: connect (queueing the whole membership), pause, resume, test, delete, end.

Here in forwarding, not in connections/, because each step touches the outbox or the lease: connecting
backfills the outbox, resuming makes it due, deleting empties it and ends the connection under its lease.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection as db
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from audiences.membership.deferred import ring_deferred_evaluations_after_commit
from audiences.membership.locks import lock_audience_membership
from audiences.models import Audience
from connections.models import Connection, ConnectionMember
from connections.selectors import MAY_BE_HELD
from connections.status import PAUSABLE
from connections.validation import check_connectable, clean_connection_settings
from forwarding import alerts, planner, recovery
from forwarding.backoff import backoff_seconds
from forwarding.delivery import attempt_error
from forwarding.doorbell import ring_after_commit, ring_end, ring_end_after_commit, ring_job, ring_job_after_commit
from forwarding.leases import acquire_lease, hold_lease
from forwarding.models import UNFINISHED_JOBS, ConnectionJob, DeliveryAttempt, PendingChange, RetiredMember
from forwarding.partner_calls import audience_ref, held_removals
from forwarding.preview import connection_settings_test
from outputs.models import Output
from outputs.partners.base import Capability, Partner
from outputs.partners.http import BudgetRefused, PartnerError

logger = logging.getLogger(__name__)
END_BATCH = 500


def connection_create(*, audience: Audience, output: Output, settings: Mapping[str, Any]) -> Connection:
    """Connect an audience to an output; its whole current membership is queued for sending. Where the partner
    creates its audience (Capability.CREATES_AUDIENCE: Meta), it is created first and the connection keeps what
    the partner answered (its id) in its settings."""
    cleaned = clean_connection_settings(output=output, settings=settings)
    created: dict[str, Any] = {}
    if output.partner_class.has(Capability.CREATES_AUDIENCE):
        check_connectable(audience=audience, output=output)  # nothing is created at the partner for a refusal
        created = _create_partner_audience(output, audience, cleaned)
        cleaned = {**cleaned, **created}
    try:
        return _connect(audience, output, cleaned)
    except Exception:
        if created:
            _release_created_audience(output, audience, cleaned)
        raise


def _create_partner_audience(output: Output, audience: Audience, cleaned: Mapping[str, Any]) -> dict[str, Any]:
    partner = output.partner()
    try:
        return partner.create_audience(cleaned, audience_ref(audience))
    except PartnerError as exc:
        raise ValidationError(
            {"output": [f"{output.partner_class.name} could not create the audience: {exc.message}"]}
        ) from exc


def _release_created_audience(output: Output, audience: Audience, cleaned: Mapping[str, Any]) -> None:
    """The connection was not written after all (e.g. connected twice at once): let go of what was created."""
    try:
        output.partner().release_audience(cleaned, audience_ref(audience))
    except PartnerError as exc:
        logger.warning("could not release the partner audience created for a failed connect (%s): %s", cleaned, exc)


def _connect(audience: Audience, output: Output, cleaned: Mapping[str, Any]) -> Connection:
    with transaction.atomic():
        # Membership changes read the audience's connections before they commit, so a change
        # committed after the backfill's snapshot by a transaction that read the connections before
        # this one commits would reach neither the backfill nor the outbox. Real-time evaluation holds
        # the audience's membership lock shared, a recompute exclusively: taken exclusively here, it
        # waits for those running and holds back those to come until this commits, so each change is
        # in the backfill or planned for the new connection. Taken before the audience row, in the
        # order a recompute takes them (no deadlock between the two).
        lock_audience_membership(audience.pk)
        # Events API requests meanwhile leave the audience out rather than wait: evaluated after commit.
        ring_deferred_evaluations_after_commit(only_if_waiting=True)
        # Locked and read afresh, so an audience archived meanwhile is not connected. FOR NO KEY
        # UPDATE: membership rows written meanwhile check their audience with KEY SHARE, which it lets by.
        audience = Audience.objects.select_for_update(no_key=True).get(pk=audience.pk)
        check_connectable(audience=audience, output=output)
        connection = Connection.objects.create(
            audience=audience,
            output=output,
            settings=cleaned,
            status=Connection.Status.SENDING,
            status_changed_at=timezone.now(),
        )
        planner.plan_backfill(connection=connection)
    return connection


def _set_status(connection: Connection, status: str, reason: str = "") -> Connection:
    """Change the status, unless the connection is ending (a delete may have committed since
    the caller loaded it): an ending connection is never revived. The admins are alerted of a
    recovery (forwarding/alerts.py), in the same transaction."""
    if alerts.change_status(connection.pk, status, reason=reason) is None:
        raise ValidationError({"status": ["This connection is being deleted."]})
    connection.refresh_from_db()
    return connection


def connection_pause(*, connection: Connection) -> Connection:
    """Stop sending; changes are still planned and sent on resume. Only a sending connection pauses
    (connections/status.py): a faulted one sends nothing already, and pausing it would hide its fault,
    so it is refused here, for the admin and the REST API alike. Pausing a paused one changes nothing."""
    paused = alerts.change_status(
        connection.pk, Connection.Status.PAUSED, reason="Paused by a user.", only_from=PAUSABLE
    )
    connection.refresh_from_db()
    if paused or connection.status == Connection.Status.PAUSED:
        return connection
    if connection.status == Connection.Status.ENDING:
        raise ValidationError({"status": ["This connection is being deleted."]})
    raise ValidationError(
        {
            "status": [
                f"A {connection.status} connection cannot be paused: it sends nothing already, and pausing "
                "would hide its fault. Resume it once the partner works again."
            ]
        }
    )


@transaction.atomic
def connection_resume(*, connection: Connection) -> Connection:
    """Send again: clears a fault and the connection's backoff, makes every pending change due now,
    and rings delivery."""
    connection = _set_status(connection, Connection.Status.SENDING)
    recovery.clear_backoff(connection.pk)
    ring_after_commit(connection.pk)
    connection.refresh_from_db()
    return connection


def connection_resume_if_test_passes(*, connection: Connection) -> Connection:
    """Resume after a fix (a new API key, a list created again), only once the partner's credentials
    test passes; otherwise nothing changes and the test's answer is the error."""
    ok, message = connection_test(connection=connection)
    if not ok:
        raise ValidationError({"status": [f"The connection test failed, so it was not resumed: {message}"]})
    return connection_resume(connection=connection)


def connection_test(*, connection: Connection) -> tuple[bool, str]:
    """Ask the partner whether the credentials and the partner-side audience work."""
    partner = connection.output.partner()
    try:
        return True, partner.test_connection(connection.settings, audience_ref(connection.audience))
    except PartnerError as exc:
        return False, exc.message


def connection_delete(*, connection: Connection) -> Connection:
    """End the connection. Where the partner's settings ask for it (Mailchimp's "Delete on
    Subscription End"), every member this connection delivered is removed first, by a task."""
    with transaction.atomic():
        # The outbox first, then the connection row: the order delivery locks them in (it deletes
        # delivered changes, then stamps the connection), so the two cannot deadlock.
        PendingChange.objects.filter(connection=connection).delete()
        connection = _set_status(connection, Connection.Status.ENDING, "Deleting: removing delivered members.")
        # The clean-up's own failures count from zero (a 429's wait, if any, still holds).
        Connection.objects.filter(pk=connection.pk).update(failures=0, failing_since=None, fault_cause="")
        ring_end_after_commit(connection.pk)
    return connection


def connection_end(*, connection_id: int, task_id: str = "") -> str:
    """Finish ending a connection: clean up at the partner in batches, then delete the row.
    Returns what happened. A failed clean-up call is recorded on the connection (its reason, a
    DeliveryAttempt) and the connection backs off as a whole, exponentially up to
    FORWARDING_BACKOFF_MAX_SECONDS (a refused key is not re-tried every few seconds forever);
    the sweeper rings it again when its wait is over. Fixing the output's key lets it finish.
    `task_id`: the Celery task doing it, recorded on each clean-up attempt."""
    lease = acquire_lease(connection_id, statuses=(Connection.Status.ENDING,))
    if lease is None:
        return "busy, throttled or gone"
    with hold_lease(lease):
        connection = Connection.objects.select_related("output", "audience").get(pk=connection_id)
        partner = connection.output.partner()
        audience = audience_ref(connection.audience)
        started = time.monotonic()
        try:
            # First the partner-side audience itself, where the partner lets go of it (Meta deletes it).
            released = partner.release_audience(connection.settings, audience)
        except PartnerError as exc:
            if lease.lost.is_set():
                return "lease lost"
            return _cleanup_failed(connection, 0, exc, int((time.monotonic() - started) * 1000), task_id)
        if partner.wants_cleanup_on_end() and not released:

            def held_batch() -> list[tuple[int, str, str]]:
                # Members whose add's answer never came may be held too: they are cleaned up as well.
                held = ConnectionMember.objects.filter(connection=connection, state__in=MAY_BE_HELD).order_by("id")
                return list(held.values_list("pk", "identity_type", "value")[:END_BATCH])

            def removed(pks: list[int], now: datetime) -> None:
                ConnectionMember.objects.filter(pk__in=pks).update(state=ConnectionMember.State.REMOVED, updated_at=now)

            failure = remove_held_in_batches(connection, partner, connection.settings, held_batch, removed, task_id)
            # An earlier target's clean-up not finished yet (a settings edit's) is finished first: deleting the
            # connection would drop what it still owes there.
            for job in ConnectionJob.objects.filter(
                connection=connection, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, status__in=UNFINISHED_JOBS
            ).order_by("pk"):
                if failure is None:
                    failure = remove_held_in_batches(connection, partner, job.settings, *_retired(job), task_id)
            if failure is not None:
                if lease.lost.is_set():
                    return "lease lost"
                return _cleanup_failed(connection, *failure, task_id)
        connection.delete()
        return "deleted"


def remove_held_in_batches(
    connection: Connection,
    partner: Partner,
    settings: Mapping[str, Any],
    next_batch: Callable[[], list[tuple[int, str, str]]],
    removed: Callable[[list[int], datetime], None],
    task_id: str,
) -> tuple[int, PartnerError, int] | None:
    """The clean-up at a partner-side target, batch after batch until `next_batch` gives nothing: the partner's
    end_connection with `settings` (the connection's own when it ends, the old ones after its target was
    edited), `removed` marks each batch done, and a DeliveryAttempt "cleanup" records each call. Returns None
    when all is removed, or (sent, error, duration ms) of the call that failed (the caller backs off)."""
    while batch := next_batch():
        changes = held_removals(partner, [(t, v) for _, t, v in batch])
        now = timezone.now()
        started = time.monotonic()
        try:
            partner.end_connection(settings, audience_ref(connection.audience), changes)
        except PartnerError as exc:
            return len(changes), exc, int((time.monotonic() - started) * 1000)
        removed([pk for pk, _, _ in batch], now)
        DeliveryAttempt.objects.create(
            connection=connection,
            kind="cleanup",
            at=now,
            duration_ms=int((time.monotonic() - started) * 1000),
            http_status=partner.last_http_status(),
            task_id=task_id,
            sent=len(changes),
            delivered=len(changes),
            result="ok",
        )
    return None


def _cleanup_failed(connection: Connection, sent: int, error: PartnerError, duration_ms: int, task_id: str) -> str:
    now = timezone.now()
    if isinstance(error, BudgetRefused):
        # Not called (our own request budget): no attempt, no failure; the clean-up waits for a token.
        delay = recovery.call_deferred(connection, error)
        Connection.objects.filter(pk=connection.pk).update(
            status_reason=f"Deleting: waiting {delay:.0f} s for the partner account's request budget."
        )
        ring_end(connection.pk, countdown=delay)
        return f"waiting {delay:.0f} s for the request budget"
    record_cleanup_failure(connection, sent, error, duration_ms, task_id)
    failures = connection.failures + 1
    delay = backoff_seconds(failures, getattr(error, "retry_after", None))
    Connection.objects.filter(pk=connection.pk).update(
        failures=failures,
        failing_since=connection.failing_since or now,
        throttled_until=now + timedelta(seconds=delay),
        status_reason=(
            f"Deleting: the partner refused the clean-up ({error.message}); attempt {failures}, "
            f"next one in {delay:.0f} s."
        )[:2000],
    )
    logger.warning("cleanup of connection %s failed (attempt %s): %s", connection.pk, failures, error.message)
    ring_end(connection.pk, countdown=delay)
    return f"retrying in {delay:.0f} s: {error.message}"


def record_cleanup_failure(
    connection: Connection, sent: int, error: PartnerError, duration_ms: int, task_id: str
) -> None:
    """The DeliveryAttempt of a clean-up call the partner refused (its reason, status and code)."""
    DeliveryAttempt.objects.create(
        connection=connection,
        kind="cleanup",
        at=timezone.now(),
        duration_ms=duration_ms,
        http_status=error.status,
        error_code=error.code,
        task_id=task_id,
        sent=sent,
        result=recovery.attempt_result(error),
        error=attempt_error(error.message),
    )


# --- editing a connection's settings ------------------------------------------------------------------

# While a target edit waits for the batch in flight to finish, the connection is held back from delivery
# this long at most (throttled_until): a process that dies meanwhile leaves no connection stuck.
SWITCH_HOLD_SECONDS = 120
# How long an edit waits for a batch in flight (one partner call) before saying so.
SWITCH_WAIT_SECONDS = 60.0
RETIRE_SQL = """
INSERT INTO {retired} (job_id, identity_type, value)
SELECT %s, identity_type, value FROM {member} WHERE connection_id = %s AND state IN ({states})
"""


@dataclass(frozen=True)
class SettingsEdit:
    """What an edit of a connection's settings does, said before it is saved and returned once it is."""

    settings: dict[str, Any]  # the complete settings after the edit, cleaned
    changed: tuple[str, ...]  # the names of the settings that change
    target_changed: bool  # a setting naming the partner-side audience changes (Setting.target)
    backfill: int  # identities of the audience's members the new target is sent (target changed)
    cleanup: int  # identities the old target holds (or may hold) from this connection
    cleans_old_target: bool  # the output asks for the clean-up (Mailchimp's Delete on Subscription End)
    sentences: tuple[str, ...] = ()
    cleanup_job: int | None = None  # the ConnectionJob removing them, once saved
    partner_test: tuple[bool, str] | None = None  # the partner's answer about the new target (as connecting asks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "changed": list(self.changed),
            "target_changed": self.target_changed,
            "backfill": self.backfill,
            "cleanup": self.cleanup if self.cleans_old_target else 0,
            "left_at_old_target": 0 if self.cleans_old_target else self.cleanup,
            "cleanup_job": self.cleanup_job,
            "partner_test": None
            if self.partner_test is None
            else {"ok": self.partner_test[0], "message": self.partner_test[1]},
            "description": " ".join(self.sentences),
        }


def connection_settings_preview(*, connection: Connection, settings: Mapping[str, Any]) -> SettingsEdit:
    """What saving these settings would do (nothing is written). `settings` may name only the settings to
    change; the others keep their values. A bad value is a ValidationError naming its setting."""
    if not isinstance(settings, Mapping):
        raise ValidationError({"settings": ['Expected an object of connection settings, e.g. {"list_id": "..."}.']})
    connection = Connection.objects.select_related("output", "audience").get(pk=connection.pk)
    if connection.status == Connection.Status.ENDING:
        raise ValidationError({"settings": ["This connection is being deleted: its settings cannot change."]})
    cleaned = clean_connection_settings(output=connection.output, settings={**connection.settings, **settings})
    partner_class = connection.output.partner_class
    changed = tuple(name for name in cleaned if cleaned[name] != connection.settings.get(name))
    target_changed = bool(set(changed) & partner_class.target_setting_names())
    backfill = cleanup = 0
    cleans = False
    if target_changed:
        backfill = planner.backfill_count(connection=connection)
        cleanup = ConnectionMember.objects.filter(connection=connection, state__in=MAY_BE_HELD).count()
        cleans = connection.output.partner().wants_cleanup_on_end()
    test = None
    if target_changed:
        test = connection_settings_test(output=connection.output, settings=cleaned, audience=connection.audience)
    edit = SettingsEdit(cleaned, changed, target_changed, backfill, cleanup, cleans, partner_test=test)
    return replace(edit, sentences=_describe_edit(connection, edit))


def _describe_edit(connection: Connection, edit: SettingsEdit) -> tuple[str, ...]:
    partner_class = connection.output.partner_class
    labels = {s.name: s.label for s in partner_class.connection_settings}
    if not edit.changed:
        return ("Nothing changes.",)
    said = []
    for name in edit.changed:
        old, new = connection.settings.get(name), edit.settings[name]
        said.append(f"{labels.get(name, name)}: {old!r} → {new!r}.")
    if not edit.target_changed:
        said.append("It applies to the changes sent from now on; nothing is sent again.")
        return tuple(said)
    cleanup_label = next(
        (s.label for s in partner_class.configuration_settings if s.name == partner_class.cleanup_setting),
        "clean-up on end",
    )
    said.append(
        f"The new target is backfilled with {edit.backfill:,} identities (the audience's current members); "
        "changes waiting for the old target are dropped (the backfill covers them)."
    )
    if edit.partner_test is not None:
        ok, words = edit.partner_test
        said.append(
            f"{partner_class.name} answers: {words}"
            if ok
            else f"{partner_class.name} refuses the new target ({words}): saving is refused until it accepts it."
        )
    if edit.cleans_old_target:
        said.append(
            f"With {cleanup_label}, the old target's {edit.cleanup:,} members from this connection are removed."
        )
    else:
        said.append(f"{cleanup_label} is off: the old target keeps its {edit.cleanup:,} members from this connection.")
    return tuple(said)


def connection_settings_update(*, connection: Connection, settings: Mapping[str, Any]) -> SettingsEdit:
    """Edit a connection's settings. Other settings just apply. A new partner-side target (Setting.target, e.g.
    Mailchimp's list id) moves the connection: delivery is held back and the batch in flight awaited, so no
    change goes to the old target once switched nor to the new one before; then, under the audience's
    membership lock (as connection_create takes it), the new target is backfilled, what the old one holds
    is handed to an old-target clean-up job (where the output asks for it), and delivery rings again."""
    edit = connection_settings_preview(connection=connection, settings=settings)
    if not edit.changed:
        return edit
    if not edit.target_changed:
        with transaction.atomic():
            row = Connection.objects.select_for_update().get(pk=connection.pk)
            if row.status == Connection.Status.ENDING:
                raise ValidationError({"settings": ["This connection is being deleted: its settings cannot change."]})
            # Merged with the row as locked: an edit of other settings committed meanwhile is kept.
            row.settings = {**row.settings, **{name: edit.settings[name] for name in edit.changed}}
            row.save(update_fields=["settings", "updated_at"])
        return edit
    target = {name: edit.settings[name] for name in connection.output.partner_class.target_setting_names()}
    if edit.partner_test is not None and not edit.partner_test[0]:
        # As connecting does: a target the partner refuses is not switched to.
        raise ValidationError(
            {name: [f"{edit.partner_test[1]} Nothing was saved."] for name in edit.changed if name in target}
        )
    running = ConnectionJob.objects.filter(
        connection=connection, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, status__in=UNFINISHED_JOBS
    )
    if any(all(job.settings.get(k) == v for k, v in target.items()) for job in running):
        name = next(iter(target))
        raise ValidationError(
            {name: ["Members are still being removed from that target (an earlier edit's clean-up): wait for it."]}
        )
    hold = timezone.now() + timedelta(seconds=SWITCH_HOLD_SECONDS)
    previous = Connection.objects.filter(pk=connection.pk).values_list("throttled_until", flat=True).first()
    # Held back: a delivery stops before its next batch (it reads throttled_until each batch) and no new one
    # takes the lease; the one batch in flight, if any, is awaited below.
    Connection.objects.filter(pk=connection.pk).update(throttled_until=hold)
    deadline = time.monotonic() + SWITCH_WAIT_SECONDS
    try:
        while True:
            done = _switch_target(connection.pk, edit, hold, previous)
            if done is not None:
                return done
            if time.monotonic() > deadline:
                raise ValidationError(
                    {"settings": ["A delivery to the partner did not finish within a minute; try again."]}
                )
            time.sleep(0.1)
    except BaseException:
        Connection.objects.filter(pk=connection.pk, throttled_until=hold).update(throttled_until=previous)
        raise


def _switch_target(
    connection_id: int, edit: SettingsEdit, hold: datetime, previous: datetime | None
) -> SettingsEdit | None:
    """The switch itself, in one transaction; None while a delivery still holds the lease (a batch in flight)."""
    with transaction.atomic():
        audience_id = Connection.objects.values_list("audience_id", flat=True).get(pk=connection_id)
        lock_audience_membership(audience_id)
        row = Connection.objects.select_for_update().select_related("output", "audience").get(pk=connection_id)
        if row.status == Connection.Status.ENDING:
            raise ValidationError({"settings": ["This connection is being deleted: its settings cannot change."]})
        if row.delivery_lease_until and row.delivery_lease_until > timezone.now():
            return None
        job = None
        if edit.cleans_old_target:
            job = ConnectionJob.objects.create(
                connection=row, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, settings=row.settings
            )
            with db.cursor() as cursor:
                cursor.execute(
                    RETIRE_SQL.format(
                        retired=RetiredMember._meta.db_table,
                        member=ConnectionMember._meta.db_table,
                        states=", ".join(["%s"] * len(MAY_BE_HELD)),
                    ),
                    [job.pk, row.pk, *MAY_BE_HELD],
                )
                job.total = cursor.rowcount
            job.save(update_fields=["total"])
            ring_job_after_commit(job.kind, job.pk)
        # What the partner holds was the old target's; the new one holds nothing of ours yet.
        ConnectionMember.objects.filter(connection=row).delete()
        # Removes were owed to the old target (the new one never had those members); adds are due at once.
        PendingChange.objects.filter(connection=row, action=PendingChange.Action.REMOVE).delete()
        PendingChange.objects.filter(connection=row).update(attempts=0, next_attempt_at=timezone.now(), last_error="")
        row.settings = {**row.settings, **{name: edit.settings[name] for name in edit.changed}}
        # Released from the hold (unless someone throttled it since, e.g. a 429 of the account).
        if row.throttled_until == hold:
            row.throttled_until = previous
        row.save(update_fields=["settings", "throttled_until", "updated_at"])
        planner.plan_backfill(connection=row)
    return replace(edit, cleanup_job=job.pk if job else None)


def _retired(
    job: ConnectionJob,
) -> tuple[Callable[[], list[tuple[int, str, str]]], Callable[[list[int], datetime], None]]:
    """An old-target clean-up's batches (its RetiredMember rows) and how each is marked done (the rows go)."""

    def next_batch() -> list[tuple[int, str, str]]:
        rows = RetiredMember.objects.filter(job=job).order_by("id")
        return list(rows.values_list("pk", "identity_type", "value")[:END_BATCH])

    def removed(pks: list[int], now: datetime) -> None:
        RetiredMember.objects.filter(pk__in=pks).delete()
        ConnectionJob.objects.filter(pk=job.pk).update(done=F("done") + len(pks), heartbeat_at=timezone.now())

    return next_batch, removed


def old_target_cleanup_run(*, job_id: int, task_id: str = "") -> str:
    """Remove from an old partner-side target, with the old settings, the members a settings edit handed over
    (RetiredMember), batch after batch as a connection's end does. A refused call is recorded and the job is
    tried again later with backoff. Returns what happened."""
    claimed = ConnectionJob.objects.filter(
        pk=job_id, kind=ConnectionJob.Kind.OLD_TARGET_CLEANUP, status=ConnectionJob.Status.QUEUED
    ).update(
        status=ConnectionJob.Status.RUNNING,
        started_at=timezone.now(),
        heartbeat_at=timezone.now(),
        task_id=task_id[:255],
    )
    if not claimed:
        return "gone, running or done"
    job = ConnectionJob.objects.select_related("connection__output", "connection__audience").get(pk=job_id)
    connection = job.connection
    partner = connection.output.partner()
    failure = remove_held_in_batches(connection, partner, job.settings, *_retired(job), task_id)
    if failure is None:
        ConnectionJob.objects.filter(pk=job.pk).update(
            status=ConnectionJob.Status.DONE, finished_at=timezone.now(), error=""
        )
        return "done"
    sent, error, duration_ms = failure
    record_cleanup_failure(connection, sent, error, duration_ms, task_id)
    delay = backoff_seconds(job.attempts + 1, getattr(error, "retry_after", None))
    ConnectionJob.objects.filter(pk=job.pk).update(
        status=ConnectionJob.Status.QUEUED,
        heartbeat_at=timezone.now() + timedelta(seconds=delay),
        attempts=F("attempts") + 1,
        error=f"The partner refused the clean-up ({error.message}); next attempt in {delay:.0f} s."[:2000],
    )
    ring_job(job.kind, job.pk, countdown=delay)
    return f"retrying in {delay:.0f} s: {error.message}"
