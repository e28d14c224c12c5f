"""Fault alerts: the admins are told when a connection faults or recovers, by email (ALERT_EMAILS) and/or
a webhook (ALERT_WEBHOOK_URL), at most once per status change.

Whoever writes a connection's status calls `connection_status_changed()` inside that transaction. It records
a ConnectionAlert keyed by the change (so the record commits or rolls back with the status, and the same
change is never recorded twice) and rings a task after commit. The task sends each configured channel that
has not gone out yet, holding the alert's row lock, so two workers never send one alert twice; a failed
channel is retried by Celery, and beat sends again what a lost task or exhausted retries left unsent.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import requests
from django.conf import settings
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.utils import timezone

from config import queueing
from connections.models import Connection
from forwarding.models import ConnectionAlert

logger = logging.getLogger(__name__)

SEND_TASK = "forwarding.tasks.send_connection_alert"
# Beat sends again the alerts left unsent this long after they were recorded, for this long.
RESEND_AFTER = timedelta(seconds=60)
RESEND_WITHIN = timedelta(days=1)
Status = Connection.Status


def alert_kind(old_status: str, new_status: str) -> str | None:
    """What a status change means to the admins: a fault, a recovery (faulted, then sending again), or nothing."""
    if new_status == Status.FAULTED and old_status != Status.FAULTED:
        return ConnectionAlert.Kind.FAULTED
    if old_status == Status.FAULTED and new_status == Status.SENDING:
        return ConnectionAlert.Kind.RECOVERED
    return None


def alerts_configured() -> bool:
    return bool(settings.ALERT_EMAILS or settings.ALERT_WEBHOOK_URL)


def change_status(
    connection_id: int,
    new_status: str,
    *,
    reason: str = "",
    only_from: Iterable[str] | None = None,
    alert_reason: str | None = None,
    **fields: Any,
) -> str | None:
    """Write a connection's status and record its alert, in one transaction: the one way a status changes,
    so no writer forgets to tell. The row is locked and its old status read; an ending connection is never
    changed, nor one whose status is not in `only_from`. `fields` are written with it; the alert says
    `alert_reason` (default: `reason`). Returns the old status, or None when nothing changed."""
    now = timezone.now()
    with transaction.atomic():
        rows = Connection.objects.select_for_update(of=("self",)).filter(pk=connection_id)
        rows = rows.exclude(status=Connection.Status.ENDING)
        if only_from is not None:
            rows = rows.filter(status__in=list(only_from))
        before = rows.values_list("status", "output__partner_key").first()
        if before is None:
            return None
        old_status, partner = before
        Connection.objects.filter(pk=connection_id).update(
            status=new_status, status_reason=reason[:2000], status_changed_at=now, **fields
        )
        connection_status_changed(
            connection_id=connection_id,
            partner=partner,
            old_status=old_status,
            new_status=new_status,
            changed_at=now,
            reason=reason if alert_reason is None else alert_reason,
        )
    return old_status


def connection_status_changed(
    *,
    connection_id: int,
    partner: str,
    old_status: str,
    new_status: str,
    changed_at: datetime,
    reason: str = "",
) -> ConnectionAlert | None:
    """Record the alert a status change deserves (if any, and if anyone is to be told) and send it after
    commit. Call it inside the transaction that writes the status."""
    kind = alert_kind(old_status, new_status)
    if kind is None or not alerts_configured():
        return None
    connection = Connection.objects.select_related("audience", "output").filter(pk=connection_id).first()
    name = str(connection) if connection else f"Connection {connection_id}"
    try:
        # A savepoint: a second call for the same change must not break the caller's transaction.
        with transaction.atomic():
            alert = ConnectionAlert.objects.create(
                connection_id=connection_id if connection else None,
                connection_ref=connection_id,
                connection_name=name[:300],
                partner=partner,
                kind=kind,
                old_status=old_status,
                new_status=new_status,
                changed_at=changed_at,
                reason=reason[:2000],
                created_at=timezone.now(),
            )
    except IntegrityError:
        return None  # this change is recorded already: told once
    transaction.on_commit(lambda: queueing.send_safely(SEND_TASK, alert.pk))
    return alert


class AlertNotSent(Exception):
    """A channel failed; the task retries."""


def alert_send(*, alert_id: int) -> str:
    """Send the alert on every configured channel not done yet. Safe to run any number of times, at once
    too: the row is locked while sending, and a channel done is never sent again."""
    with transaction.atomic():
        alert = ConnectionAlert.objects.select_for_update(skip_locked=True).filter(pk=alert_id).first()
        if alert is None:
            return "busy or gone"
        if alert.sent_at:
            return "sent already"
        errors = []
        if settings.ALERT_EMAILS and not alert.emailed_at:
            try:
                _send_email(alert)
                alert.emailed_at = timezone.now()
            except Exception as exc:  # SMTP errors come in many classes; the task retries them all
                errors.append(f"email: {exc.__class__.__name__}: {exc}")
        if settings.ALERT_WEBHOOK_URL and not alert.webhook_at:
            try:
                _post_webhook(alert)
                alert.webhook_at = timezone.now()
            except requests.RequestException as exc:
                errors.append(f"webhook: {exc.__class__.__name__}")
            except AlertNotSent as exc:
                errors.append(f"webhook: {exc}")
        alert.attempts += 1
        alert.last_error = "; ".join(errors)[:2000]
        if not errors:
            alert.sent_at = timezone.now()
        alert.save(update_fields=["emailed_at", "webhook_at", "sent_at", "attempts", "last_error"])
    if errors:
        logger.warning("alert %s for connection %s not sent: %s", alert.pk, alert.connection_ref, alert.last_error)
        raise AlertNotSent(alert.last_error)
    logger.info("alert %s sent: connection %s %s", alert.pk, alert.connection_ref, alert.kind)
    return "sent"


def alerts_resend() -> int:
    """Ring again the alerts left unsent (a task lost with the broker, or out of retries). Run by beat."""
    now = timezone.now()
    unsent = list(
        ConnectionAlert.objects.filter(
            sent_at__isnull=True, created_at__lt=now - RESEND_AFTER, created_at__gt=now - RESEND_WITHIN
        ).values_list("pk", flat=True)
    )
    for alert_id in unsent:
        queueing.send_safely(SEND_TASK, alert_id)
    return len(unsent)


def _subject(alert: ConnectionAlert) -> str:
    if alert.kind == ConnectionAlert.Kind.FAULTED:
        return f"Connection faulted: {alert.connection_name}"
    return f"Connection recovered: {alert.connection_name}"


def _send_email(alert: ConnectionAlert) -> None:
    lines = [
        _subject(alert),
        "",
        f"Connection: {alert.connection_name} (id {alert.connection_ref}, partner {alert.partner})",
        f"Status: {alert.old_status} -> {alert.new_status} at {alert.changed_at.isoformat()}",
    ]
    if alert.reason:
        lines.append(f"Reason: {alert.reason}")
    if alert.kind == ConnectionAlert.Kind.FAULTED:
        lines += ["", "Nothing is sent to the partner until someone resumes the connection (admin: Connections)."]
    send_mail(
        subject=f"[Audience Forwarding] {_subject(alert)}",
        message="\n".join(lines),
        from_email=None,  # DEFAULT_FROM_EMAIL
        recipient_list=settings.ALERT_EMAILS,
    )


def webhook_payload(alert: ConnectionAlert) -> dict:
    """The webhook's JSON: the change, no secrets and no personal data."""
    return {
        "event": f"connection.{alert.kind}",
        "alert_id": alert.pk,
        "connection": {"id": alert.connection_ref, "name": alert.connection_name, "partner": alert.partner},
        "old_status": alert.old_status,
        "new_status": alert.new_status,
        "changed_at": alert.changed_at.isoformat(),
        "reason": alert.reason,
    }


def _post_webhook(alert: ConnectionAlert) -> None:
    timeout = settings.ALERT_WEBHOOK_TIMEOUT
    response = requests.post(
        settings.ALERT_WEBHOOK_URL,
        json=webhook_payload(alert),
        headers={"Idempotency-Key": f"connection-alert-{alert.pk}"},
        timeout=(min(timeout, 5.0), timeout),
        allow_redirects=False,
    )
    if not 200 <= response.status_code < 300:
        raise AlertNotSent(f"HTTP {response.status_code}")
