from __future__ import annotations

from django.db import models
from django.utils import timezone

from audiences.identities import IDENTITY_TYPE_CHOICES


class PendingChange(models.Model):
    """The outbox: a membership message a connection still owes its partner.

    One row per (connection, identity): a newer word replaces an older one (the last word
    wins) and bumps `version`, so a delivery that sent the older word does not delete it.
    """

    class Action(models.TextChoices):
        ADD = "add"
        REMOVE = "remove"

    # No index of its own: the indexes below and the unique constraint's lead with the connection.
    connection = models.ForeignKey(
        "connections.Connection", on_delete=models.CASCADE, related_name="pending_changes", db_index=False
    )
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


class Upload(models.Model):
    """One upload of a bulk connection (forwarding/bulk.py): why it ran, when, and how it went, so a
    connection shows its last upload and the progress of a long one. Written when the upload holds the
    connection's lease, finished when it lets go; one the worker never finished (killed, lease lost) is
    closed as interrupted by the next upload. Counts, no identities."""

    class Trigger(models.TextChoices):
        TIME = "time", "time (the oldest change waited long enough)"
        COUNT = "count", "count (enough changes waiting)"
        MANUAL = "manual", "upload now"
        RETRY = "retry", "retry (after a backoff, a resume or a worker's hand-over)"

    class Outcome(models.TextChoices):
        OK = "ok"
        PARTIAL = "partial"  # some rejected, or left to a retry
        FAILED = "failed"  # a partner call failed: the rest waits (backoff, or a fault)
        STOPPED = "stopped"  # paused, throttled, the worker shutting down, the lease lost
        INTERRUPTED = "interrupted"  # never finished: its worker died; the next upload sent what it had not recorded

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="uploads")
    trigger = models.CharField(max_length=10, choices=Trigger.choices)
    # The lease this upload ran under (forwarding/leases.py): while the connection still has it, it runs.
    lease_holder = models.CharField(max_length=200, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=12, choices=Outcome.choices, blank=True)  # empty while running
    detail = models.TextField(blank=True)
    batches = models.PositiveIntegerField(default=0)
    sent = models.PositiveIntegerField(default=0)  # changes in the partner calls made
    delivered = models.PositiveIntegerField(default=0)
    rejected = models.PositiveIntegerField(default=0)
    retried = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0)  # removes of identities the partner never held

    class Meta:
        ordering = ["-started_at", "-id"]
        indexes = [models.Index(fields=["connection", "-started_at"])]

    def __str__(self) -> str:
        return f"upload of connection {self.connection_id} at {self.started_at:%Y-%m-%d %H:%M:%S}"


class ConnectionJob(models.Model):
    """A piece of a connection's life cycle that runs as a task, with its progress for the admin and the API:
    a reconcile (read what the partner holds, repair drift), or the clean-up of the partner-side target a
    settings edit left (the old Mailchimp list's members, removed with the old settings)."""

    class Kind(models.TextChoices):
        RECONCILE = "reconcile"
        OLD_TARGET_CLEANUP = "old_target_cleanup"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        DONE = "done"
        FAILED = "failed"

    connection = models.ForeignKey("connections.Connection", on_delete=models.CASCADE, related_name="jobs")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    # The connection settings the job works with: the old target's, for a clean-up.
    settings = models.JSONField(default=dict, blank=True)
    # Progress: items done so far (members read from the partner, members removed), of `total` when known.
    done = models.PositiveIntegerField(default=0)
    total = models.PositiveIntegerField(null=True, blank=True)
    # What it found and did, e.g. {"adds_planned": 3, "removes_planned": 1, "corrected": 4}.
    result = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    task_id = models.CharField(max_length=255, blank=True)
    # Its last sign of life (queued, claimed, progress), or when a retry is due: the sweeper rings again a job
    # left queued or silent too long (forwarding.sync.jobs_ring_stalled).
    heartbeat_at = models.DateTimeField(default=timezone.now)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [
            models.Index(fields=["connection", "kind", "status"]),
            models.Index(fields=["status", "heartbeat_at"]),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} of connection {self.connection_id}: {self.status}"


UNFINISHED_JOBS = (ConnectionJob.Status.QUEUED, ConnectionJob.Status.RUNNING)


class RetiredMember(models.Model):
    """An identity a connection's old partner-side target holds (or may hold), owed a removal there by an
    old-target clean-up job. Apart from ConnectionMember, which describes the current target."""

    job = models.ForeignKey(ConnectionJob, on_delete=models.CASCADE, related_name="retired_members")
    identity_type = models.CharField(max_length=40, choices=IDENTITY_TYPE_CHOICES)
    value = models.CharField(max_length=255)
