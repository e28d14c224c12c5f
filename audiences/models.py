from __future__ import annotations

from django.db import models
from django.db.models import Q

from audiences.identities import IDENTITY_TYPE_CHOICES


class Profile(models.Model):
    """One user (mParticle's MPID): identities, user attributes and, later, events."""

    attributes = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"Profile {self.pk}"


class Identity(models.Model):
    """A (type, value) pair. A value belongs to exactly one profile."""

    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="identities")
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
    # Bumped on every criteria change so a stale recompute is a no-op.
    criteria_version = models.PositiveIntegerField(default=1)
    last_calculated_at = models.DateTimeField(null=True, blank=True)
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

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="memberships")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="memberships")
    entered_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["audience", "profile"], name="membership_audience_profile_unique")
        ]
        indexes = [models.Index(fields=["profile"])]


class MembershipChange(models.Model):
    """The change log: who entered or left an audience, when and why."""

    class Kind(models.TextChoices):
        ENTERED = "entered"
        LEFT = "left"

    audience = models.ForeignKey(Audience, on_delete=models.CASCADE, related_name="changes")
    profile = models.ForeignKey(Profile, on_delete=models.CASCADE, related_name="membership_changes")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    reason = models.CharField(max_length=200, blank=True)
    at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-at", "-id"]
        indexes = [models.Index(fields=["audience", "at"]), models.Index(fields=["profile", "at"])]


ACTIVE_AUDIENCES = Q(status=Audience.Status.ACTIVE)
