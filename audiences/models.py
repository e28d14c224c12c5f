from __future__ import annotations

import secrets

from django.db import models
from django.db.models import Q
from django.db.models.functions import Lower

from audiences.identities import IDENTITY_TYPE_CHOICES


def new_mpid() -> int:
    """A random positive signed 64-bit id, as mParticle's MPIDs are."""
    return secrets.randbits(63) or 1


class Profile(models.Model):
    """One user: identities, user attributes and events. `mpid` is the id partners and the
    Events API know it by (mParticle's MPID).

    Attribute names are case-insensitive: they are stored lower-cased."""

    mpid = models.BigIntegerField(unique=True, default=new_mpid)
    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Profile {self.pk}"


class Identity(models.Model):
    """A (type, value) pair. A value belongs to exactly one profile."""

    # No index of its own: (profile, type) below serves every lookup by profile (each insert paid for both).
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="identities", db_index=False)
    type = models.CharField(max_length=40, choices=IDENTITY_TYPE_CHOICES)
    value = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["type", "value"], name="identity_type_value_unique")]
        indexes = [models.Index(fields=["profile", "type"])]
        verbose_name_plural = "identities"

    def __str__(self) -> str:
        return f"{self.type}:{self.value}"


class Audience(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft"
        ACTIVE = "active"
        ARCHIVED = "archived"

    name = models.CharField(max_length=100, unique=True)
    # The name partners see (list names, attribute names); defaults to the name.
    external_name = models.CharField(max_length=100, blank=True)
    description = models.TextField(blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.DRAFT)
    criteria = models.JSONField(default=dict)
    # True when membership can change with the clock alone (event recency, "within the last"):
    # the periodic recompute looks at these audiences only.
    depends_on_time = models.BooleanField(default=False, editable=False)
    # Bumped on every criteria change so a stale recompute is a no-op.
    criteria_version = models.PositiveIntegerField(default=1)
    last_calculated_at = models.DateTimeField(null=True, blank=True)
    # The last failure of real-time evaluation (audiences/membership/evaluation.py): the audience was
    # left out of that evaluation, the others and the ingestion went on. Cleared by new criteria.
    evaluation_error = models.TextField(blank=True, editable=False)
    evaluation_failed_at = models.DateTimeField(null=True, blank=True, editable=False)
    # The last failure of a recompute, how many in a row, and when the sweeper may try again
    # (audiences/membership/recompute.py): a failing recompute backs off instead of re-running every sweep.
    recompute_error = models.TextField(blank=True, editable=False)
    recompute_failed_at = models.DateTimeField(null=True, blank=True, editable=False)
    recompute_failures = models.PositiveIntegerField(default=0, editable=False)
    recompute_retry_at = models.DateTimeField(null=True, blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def partner_name(self) -> str:
        return self.external_name or self.name


class AudienceMembership(models.Model):
    """The computed membership: one row per profile currently in the audience."""

    # The unique (audience, profile) serves the lookups by audience; the foreign key's index those by profile
    # (there were two identical indexes on profile, and one on audience: each insert paid for all of them).
    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="memberships", db_index=False)
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="memberships")
    entered_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["audience", "profile"], name="membership_audience_profile_unique")
        ]


class MembershipChange(models.Model):
    """The change log: who entered or left an audience, when and why."""

    class Kind(models.TextChoices):
        ENTERED = "entered"
        LEFT = "left"

    # No indexes of their own: (audience, at) and (profile, at) below serve every lookup by either.
    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="changes", db_index=False)
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="membership_changes", db_index=False)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["audience", "at"]), models.Index(fields=["profile", "at"])]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at:%Y-%m-%d %H:%M:%S}"


class DeferredEvaluation(models.Model):
    """A profile whose real-time evaluation left some audiences out because their membership lock was held
    (a recompute or a connect running: audiences/membership/deferred.py). Evaluated again for them once the
    lock is free; the row is the durable record, the task that does it only the doorbell."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="+")
    audience_ids = models.JSONField(default=list)  # the audiences left out
    identity_ids = models.JSONField(default=list)  # identities the request added: sent where the profile stays
    reason = models.CharField(max_length=200, blank=True)  # for the change log, as the request would have said
    deferred_at = models.DateTimeField(db_index=True)


ACTIVE_AUDIENCES = Q(status=Audience.Status.ACTIVE)


class Input(models.Model):
    """A source of data for the Events API, authenticated with its key and secret (HTTP Basic).

    The secret is random and high-entropy, so a fast SHA-256 digest is enough to store it: a slow
    password hash would cost every request hundreds of milliseconds."""

    name = models.CharField(max_length=100, unique=True)
    key = models.CharField(max_length=64, unique=True)
    secret_sha256 = models.CharField(max_length=64, editable=False)
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Event(models.Model):
    """One event of a profile, kept for EVENT_RETENTION_DAYS."""

    # No index of its own: event_profile_time_idx (profile, timestamp) serves every lookup by profile.
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="events", db_index=False)
    input = models.ForeignKey(Input, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    event_type = models.CharField(max_length=40)
    # event_name for custom and commerce events, screen_name for screen views, else the event_type.
    name = models.CharField(max_length=256)
    custom_event_type = models.CharField(max_length=40, blank=True)
    # Custom attributes, names lower-cased.
    attributes = models.JSONField(default=dict, blank=True)
    timestamp = models.DateTimeField()
    source_message_id = models.CharField(max_length=128, blank=True)
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["profile", "timestamp"], name="event_profile_time_idx"),
            models.Index(Lower("name"), "timestamp", name="event_name_time_idx"),
            models.Index(fields=["timestamp"], name="event_time_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.event_type}) at {self.timestamp:%Y-%m-%d %H:%M:%S}"


class BatchReceipt(models.Model):
    """A batch accepted by the Events API, by its source_request_id: a repeat is not stored twice."""

    # No index of its own: the unique (input, source_request_id) serves every lookup by input.
    input = models.ForeignKey(Input, on_delete=models.CASCADE, related_name="+", db_index=False)
    source_request_id = models.CharField(max_length=128)
    received_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["input", "source_request_id"], name="batch_receipt_unique")]


class IdentityConflict(models.Model):
    """A batch whose identities pointed to more than one profile, and what the rule decided."""

    at = models.DateTimeField(db_index=True)
    input = models.ForeignKey(Input, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    source_request_id = models.CharField(max_length=128, blank=True)
    identities = models.JSONField(default=list)  # ["email:a@x.com", ...] as sent
    profile_ids = models.JSONField(default=list)  # every profile they pointed to
    chosen_profile = models.ForeignKey(Profile, on_delete=models.SET_NULL, null=True, related_name="+")
    # Identities left on the other profiles (not moved), as "type:value".
    not_attached = models.JSONField(default=list)
    # Text, not a bounded CharField: the rule quotes the winning identity (up to 255 characters).
    rule = models.TextField()
    # Set when someone merged its profiles (audiences/merge.py: conflict_resolve), with what was done.
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolution = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-at"]


class ProfileErasure(models.Model):
    """A data subject's erasure (audiences/erasure.py): what was deleted, and whether every partner that
    held the profile has been told to remove it. Holds no personal data: no identity, no profile id."""

    class Status(models.TextChoices):
        # The profile's data is deleted; the partners' removes are planned, waiting for delivery.
        REMOVING = "removing"
        DONE = "done"

    requested_at = models.DateTimeField(db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.REMOVING)
    source = models.CharField(max_length=10)  # api | admin
    identities = models.PositiveIntegerField(default=0)
    events = models.PositiveIntegerField(default=0)
    audiences_left = models.PositiveIntegerField(default=0)
    history = models.PositiveIntegerField(default=0)  # membership changes deleted (the leaves included)
    identity_conflicts = models.PositiveIntegerField(default=0)
    partner_removes = models.PositiveIntegerField(default=0)  # (connection, identity) removes planned
    partner_refused = models.PositiveIntegerField(default=0)  # removes the partner refused

    class Meta:
        ordering = ["-requested_at", "-id"]

    def __str__(self) -> str:
        return f"Erasure {self.pk} ({self.status})"


class AudienceSnapshot(models.Model):
    """One audience's day (UTC): its size at the end of the day (or now, for today), and who entered and
    left during it. Written by audiences/history.py from the change log; drawn on the audience's page."""

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="snapshots")
    day = models.DateField()
    size = models.PositiveIntegerField()
    adds = models.PositiveIntegerField()
    drops = models.PositiveIntegerField()
    taken_at = models.DateTimeField()

    class Meta:
        ordering = ["audience", "day"]
        constraints = [models.UniqueConstraint(fields=["audience", "day"], name="audience_snapshot_day_unique")]
