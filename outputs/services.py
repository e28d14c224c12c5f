"""Writes for outputs: create and update, with settings validated by the partner's schema."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.db import IntegrityError, transaction

from outputs.crypto import decrypt_secrets, encrypt_secrets, reencrypt_secrets, uses_current_key
from outputs.models import Output
from outputs.partners.registry import get_partner_class


def _split(partner_cls, cleaned: Mapping[str, Any]) -> tuple[dict, dict]:
    secret_names = partner_cls.secret_setting_names()
    public = {k: v for k, v in cleaned.items() if k not in secret_names}
    secrets = {k: v for k, v in cleaned.items() if k in secret_names and v != ""}
    return public, secrets


def _check_name(name: str, *, exclude_id: int | None = None) -> str:
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": ["This field is required."]})
    if len(name) > 100:
        raise ValidationError({"name": ["Ensure this value has at most 100 characters."]})
    clash = Output.objects.filter(name=name)
    if exclude_id is not None:
        clash = clash.exclude(pk=exclude_id)
    if clash.exists():
        raise ValidationError({"name": [f"An output named '{name}' already exists."]})
    return name


def output_create(*, name: str, partner_key: str, settings: Mapping[str, Any]) -> Output:
    try:
        partner_cls = get_partner_class(partner_key)
    except LookupError as exc:
        raise ValidationError({"partner": [str(exc)]}) from None
    # Name and settings errors are reported together, so a form is corrected in one go.
    errors: dict[str, list[str]] = {}
    try:
        name = _check_name(name)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    try:
        cleaned = partner_cls.clean_configuration(settings)
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if errors:
        raise ValidationError(errors)
    public, secrets = _split(partner_cls, cleaned)
    try:
        with transaction.atomic():
            return Output.objects.create(
                name=name, partner_key=partner_key, settings=public, encrypted_secrets=encrypt_secrets(secrets)
            )
    except IntegrityError:  # the same name created meanwhile by someone else
        raise ValidationError({"name": [f"An output named '{name}' already exists."]}) from None


@transaction.atomic
def output_update(
    *,
    output: Output,
    name: str | None = None,
    settings: Mapping[str, Any] | None = None,
    replace_settings: bool = False,
) -> Output:
    """Update name and/or configuration settings.

    By default a partial update (REST PATCH, the admin's edit form): a setting not named in
    `settings` keeps its stored value. With `replace_settings` (REST PUT) the settings given
    replace the stored ones, and those omitted take their defaults. In both, a secret left out
    or blank keeps its stored value: secrets are write-only, so no client can send one back.
    """
    output = Output.objects.select_for_update().get(pk=output.pk)
    if name is not None:
        output.name = _check_name(name, exclude_id=output.pk)
    if settings is not None:
        partner_cls = output.partner_class
        stored_secrets = decrypt_secrets(output.encrypted_secrets)
        known = {s.name for s in partner_cls.configuration_settings}
        # Start from what is stored (only settings the partner still has), then apply the update.
        submitted = {} if replace_settings else {k: v for k, v in output.settings.items() if k in known}
        submitted.update(settings)
        for secret in partner_cls.secret_setting_names():
            if submitted.get(secret) in (None, "") and secret in stored_secrets:
                submitted[secret] = stored_secrets[secret]
        cleaned = partner_cls.clean_configuration(submitted)
        public, secrets = _split(partner_cls, cleaned)
        output.settings = public
        output.encrypted_secrets = encrypt_secrets({**stored_secrets, **secrets})
    output.save()
    return output


@dataclass
class SecretsRotation:
    reencrypted: int = 0
    already_current: int = 0
    unreadable: list[int] = field(default_factory=list)  # output ids no configured key decrypts


def output_secrets_reencrypt() -> SecretsRotation:
    """Re-encrypt every output's stored secrets with the first key of SECRETS_ENCRYPTION_KEYS.

    Idempotent: secrets already under the first key are left as they are. Each output is rewritten
    in its own transaction under a row lock, so an edit saved meanwhile is neither lost nor undone.
    Outputs whose secrets no key decrypts are reported, not skipped silently."""
    result = SecretsRotation()
    ids = Output.objects.exclude(encrypted_secrets="").order_by("pk").values_list("pk", flat=True)
    for output_id in ids.iterator():
        with transaction.atomic():
            output = Output.objects.select_for_update().filter(pk=output_id).first()
            if output is None or not output.encrypted_secrets:
                continue
            if uses_current_key(output.encrypted_secrets):
                result.already_current += 1
                continue
            try:
                output.encrypted_secrets = reencrypt_secrets(output.encrypted_secrets)
            except ImproperlyConfigured:
                result.unreadable.append(output.pk)
                continue
            output.save(update_fields=["encrypted_secrets"])
            result.reencrypted += 1
    return result
