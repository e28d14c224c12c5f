from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models

from audiences.identities import IDENTITY_TYPE_CHOICES

# The bounds of a bulk connection's own upload criteria (forwarding/bulk.py): at least a minute or one
# message; at most a week (a longer wait only hides a stuck connection) and 10,000,000 messages (beyond
# every partner's default in reference/PARTNERS.md: Meta's 750,000).
UPLOAD_WAIT_MINUTES_MAX = 7 * 24 * 60
UPLOAD_MESSAGES_MAX = 10_000_000


class Connection(models.Model):
    """An audience connected to an output, with the connection settings (e.g. the Mailchimp list id)."""

    class FaultCause(models.TextChoices):
        OUTAGE = "outage"
        REFUSED = "refused"

    class Status(models.TextChoices):
        SENDING = "sending"
        PAUSED = "paused"
        FAULTED = "faulted"  # the partner refused us (credentials, missing list, retries exhausted)
        ENDING = "ending"  # deleted: cleaning up what the partner holds, then the row goes

    audience = models.ForeignKey("audiences.Audience", on_delete=models.PROTECT, related_name="connections")
    output = models.ForeignKey("outputs.Output", on_delete=models.PROTECT, related_name="connections")
    settings = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.SENDING)
    status_reason = models.TextField(blank=True)
    status_changed_at = models.DateTimeField(null=True, blank=True)
    # One worker delivers a connection at a time, so the partner sees changes in order. The
    # holder's token proves a renewal is by the holder (forwarding/leases.py).
    delivery_lease_until = models.DateTimeField(null=True, blank=True, editable=False)
    delivery_lease_holder = models.CharField(max_length=200, blank=True, editable=False)
    # The connection as a whole waits until then: a 429's Retry-After, or its backoff while the
    # partner fails every call (forwarding/recovery.py). Nothing is sent before, by anyone.
    throttled_until = models.DateTimeField(null=True, blank=True, editable=False)
    # The current run of whole-call failures: since when, and how many in a row (0: healthy).
    failing_since = models.DateTimeField(null=True, blank=True, editable=False)
    failures = models.PositiveIntegerField(default=0, editable=False)
    # Why a faulted connection faulted: an outage is probed and resumes by itself when the partner
    # answers again; a refusal (credentials, a missing list) waits for a person.
    fault_cause = models.CharField(max_length=10, choices=FaultCause.choices, blank=True, editable=False)
    last_delivered_at = models.DateTimeField(null=True, blank=True, editable=False)
    # A bulk connection's own upload criteria, each overriding its partner's default_upload_criteria when
    # set (empty: the partner's). Read by forwarding.bulk.upload_criteria().
    upload_wait_minutes = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(UPLOAD_WAIT_MINUTES_MAX)],
        help_text="Upload once the oldest waiting change has waited this many minutes (empty: the partner's default).",
    )
    upload_messages = models.PositiveIntegerField(
        null=True,
        blank=True,
        validators=[MinValueValidator(1), MaxValueValidator(UPLOAD_MESSAGES_MAX)],
        help_text="Upload as soon as this many changes wait (empty: the partner's default).",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["audience__name", "output__name"]
        constraints = [models.UniqueConstraint(fields=["audience", "output"], name="connection_audience_output_unique")]

    def __str__(self) -> str:
        return f"{self.audience} → {self.output.name}"


class ConnectionMember(models.Model):
    """What the partner holds for a connection, one identity at a time, as the partner last answered.

    An add is written ahead as "maybe held" before it is sent (forwarding/delivery.py): if its answer never
    comes (a timeout, a killed worker, a database lost after the call), the partner may hold the member,
    so its removal is still sent later. The partner's answer, once recorded, replaces it.
    """

    class State(models.TextChoices):
        ADDED = "added"
        MAYBE_HELD = "maybe_held", "Maybe held (sent, answer not recorded)"
        REMOVED = "removed"
        REJECTED = "rejected"

    # No index of its own: the unique constraint's index leads with the connection.
    connection = models.ForeignKey(Connection, on_delete=models.CASCADE, related_name="members", db_index=False)
    identity_type = models.CharField(max_length=40, choices=IDENTITY_TYPE_CHOICES)
    value = models.CharField(max_length=255)
    # Not indexed, nor is any column an answer changes: recording the answer to an add written ahead is then a
    # HOT update (no index entry written; see migration 0006 and README "Delivery speed").
    state = models.CharField(max_length=10, choices=State.choices)
    reason = models.TextField(blank=True)
    # What the partner holds of an "added" member: the fingerprint of the add it acknowledged (its identity and
    # attributes, forwarding.partner_calls.change_fingerprint). Blank while unknown: never acknowledged, or an
    # update sent and not answered. An add identical to the one the partner acknowledged is not sent again (a
    # member who left and re-entered before its removal went out).
    fingerprint = models.CharField(max_length=32, blank=True, default="", db_default="")  # raw SQL inserts too
    updated_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "identity_type", "value"], name="connection_member_identity_unique"
            )
        ]
