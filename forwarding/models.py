from __future__ import annotations

from django.db import models

from audiences.identities import IDENTITY_TYPE_CHOICES


class PendingChange(models.Model):
    """The outbox: a membership message a connection still owes its partner.

    One row per (connection, identity): a newer word replaces an older one (the last word
    wins) and bumps `version`, so a delivery that sent the older word does not delete it.
    """

    class Action(models.TextChoices):
        ADD = "add"
        REMOVE = "remove"

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="pending_changes")
    identity_type = models.CharField(max_length=40, choices=IDENTITY_TYPE_CHOICES)
    value = models.CharField(max_length=255)
    action = models.CharField(max_length=10, choices=Action.choices)
    # Where the attributes sent with an add come from (read at delivery time, so they are fresh).
    profile = models.ForeignKey("audiences.Profile", on_delete=models.SET_NULL, null=True, blank=True)
    version = models.PositiveIntegerField(default=1)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "identity_type", "value"], name="pending_change_identity_unique"
            )
        ]
        indexes = [
            models.Index(fields=["connection", "next_attempt_at"]),
            # Delivery's claim: due changes in id order after the last one claimed (forwarding/batches.py).
            models.Index(fields=["connection", "id"], name="pending_change_claim"),
        ]


class DeliveryAttempt(models.Model):
    """One partner call made for a connection: what was sent and how it went, with what an operator needs
    to debug a fault (the partner's HTTP status and error code, the task, the duration). No secrets and no
    personal data: counts, codes, and the error text with email addresses masked."""

    class Result(models.TextChoices):
        OK = "ok"
        PARTIAL = "partial"  # some members rejected or to be retried
        TRANSIENT = "transient"
        AUTH = "auth"
        PERMANENT = "permanent"

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="attempts")
    kind = models.CharField(max_length=20, default="batch")  # batch | cleanup | erasure (forwarding/erasure.py)
    at = models.DateTimeField(db_index=True)
    duration_ms = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    result = models.CharField(max_length=10, choices=Result.choices)
    error = models.TextField(blank=True)
    # The status of the partner's answer; empty when none came (timeout, refused or dropped connection).
    http_status = models.PositiveSmallIntegerField(null=True, blank=True)
    # The partner's own name for the error (Mailchimp's problem title, e.g. "API Key Invalid").
    error_code = models.CharField(max_length=100, blank=True)
    # The Celery task that made the call (empty when called outside a task), to find it in the worker's log.
    task_id = models.CharField(max_length=255, blank=True)

    class Meta:
        ordering = ["-at", "-id"]


class ConnectionAlert(models.Model):
    """One fault or recovery of a connection, to be told to the admins (forwarding/alerts.py).

    Keyed by the status change (connection, new status, time of the change), so one change is told
    at most once however often its task runs; each channel records when it was sent, so a retry after
    the email went out only calls the webhook. Kept without the connection's row if it is deleted."""

    class Kind(models.TextChoices):
        FAULTED = "faulted"
        RECOVERED = "recovered"

    connection = models.ForeignKey("connections.Connection", on_delete=models.SET_NULL, null=True, related_name="+")
    # Copied, so the alert still says what it was about after the connection is deleted.
    connection_ref = models.PositiveBigIntegerField()
    connection_name = models.CharField(max_length=300)
    partner = models.CharField(max_length=50)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    old_status = models.CharField(max_length=10)
    new_status = models.CharField(max_length=10)
    changed_at = models.DateTimeField()
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(db_index=True)
    emailed_at = models.DateTimeField(null=True, blank=True)
    webhook_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True)  # every configured channel done
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-changed_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["connection_ref", "new_status", "changed_at"], name="connection_alert_change_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.connection_name} {self.kind} at {self.changed_at:%Y-%m-%d %H:%M:%S}"


class ErasureRemoval(models.Model):
    """A remove planned for a data subject's erasure (forwarding/erasure.py), kept until the outbox has
    delivered it: then the connection's record of the member (which quotes the value) is deleted too, and
    this row with it. The only rows of an erased profile's values left, and only while removes are owed."""

    erasure = models.ForeignKey("audiences.ProfileErasure", on_delete=models.CASCADE, related_name="+")
    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="+")
    identity_type = models.CharField(max_length=40, choices=IDENTITY_TYPE_CHOICES)
    value = models.CharField(max_length=255)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["erasure", "connection", "identity_type", "value"], name="erasure_removal_unique"
            )
        ]


class ConnectionSnapshot(models.Model):
    """One connection's day (UTC): the identities the partner accepted and refused that day, summed from
    the delivery attempts (forwarding/history.py); drawn on the connection's page."""

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="snapshots")
    day = models.DateField()
    delivered = models.PositiveIntegerField()
    rejected = models.PositiveIntegerField()
    taken_at = models.DateTimeField()

    class Meta:
        ordering = ["connection", "day"]
        constraints = [models.UniqueConstraint(fields=["connection", "day"], name="connection_snapshot_day_unique")]
