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
        indexes = [models.Index(fields=["connection", "next_attempt_at"])]


class DeliveryAttempt(models.Model):
    """One partner call made for a connection: what was sent and how it went."""

    class Result(models.TextChoices):
        OK = "ok"
        PARTIAL = "partial"  # some members rejected or to be retried
        TRANSIENT = "transient"
        AUTH = "auth"
        PERMANENT = "permanent"

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="attempts")
    kind = models.CharField(max_length=20, default="batch")  # batch | cleanup
    at = models.DateTimeField(db_index=True)
    duration_ms = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)
    delivered = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    result = models.CharField(max_length=10, choices=Result.choices)
    error = models.TextField(blank=True)

    class Meta:
        ordering = ["-at", "-id"]


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
