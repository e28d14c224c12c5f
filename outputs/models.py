from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError
from django.db import models

from outputs.crypto import decrypt_secrets
from outputs.partners.base import Partner
from outputs.partners.registry import get_partner_class


class Output(models.Model):
    """One configured partner account (mParticle's "audience configuration")."""

    name = models.CharField(max_length=100, unique=True)
    # A key of outputs.partners.registry, checked by clean() and the services, not frozen into the schema as
    # choices: a new partner needs no migration.
    partner_key = models.CharField("partner", max_length=40)
    # Non-secret configuration settings, as cleaned by the partner's schema.
    settings = models.JSONField(default=dict, blank=True)
    # Secret settings (API keys, tokens): a Fernet token of a JSON object. Never shown again.
    encrypted_secrets = models.TextField(blank=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return f"{self.name} ({self.partner_class.name})"

    def clean(self) -> None:
        try:
            get_partner_class(self.partner_key)
        except LookupError as exc:
            raise ValidationError({"partner_key": [str(exc)]}) from None

    @property
    def partner_class(self) -> type[Partner]:
        return get_partner_class(self.partner_key)

    def configuration(self) -> dict[str, Any]:
        """Every configuration setting, secrets decrypted: for partner calls only."""
        return {**self.settings, **decrypt_secrets(self.encrypted_secrets)}

    def partner(self) -> Partner:
        return self.partner_class(self.configuration())

    def secret_names_set(self) -> list[str]:
        """Which secrets are stored (their names, never their values)."""
        return sorted(decrypt_secrets(self.encrypted_secrets))
