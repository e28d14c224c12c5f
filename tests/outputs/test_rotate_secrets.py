"""Partner secrets under key rotation: MultiFernet (the first key encrypts, all decrypt) and
`manage.py rotate_secrets`, which re-encrypts every stored secret with the first key."""

from __future__ import annotations

import io

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command

from outputs.crypto import uses_current_key
from outputs.models import Output
from tests.factories import MAILCHIMP_KEY, mailchimp_output

pytestmark = pytest.mark.django_db


def new_key() -> str:
    return Fernet.generate_key().decode()


def rotate() -> str:
    out = io.StringIO()
    call_command("rotate_secrets", stdout=out)
    return out.getvalue()


def test_a_secret_under_an_old_key_is_readable_then_reencrypted_and_the_old_key_can_go(settings):
    old, new = new_key(), new_key()
    settings.SECRETS_ENCRYPTION_KEYS = [old]
    output = mailchimp_output()
    token_under_old = Output.objects.get(pk=output.pk).encrypted_secrets

    # A new key first, the old one kept: the old secret still reads, new writes use the new key.
    settings.SECRETS_ENCRYPTION_KEYS = [new, old]
    stored = Output.objects.get(pk=output.pk)
    assert stored.configuration()["api_key"] == MAILCHIMP_KEY
    assert not uses_current_key(stored.encrypted_secrets)

    assert "Re-encrypted the secrets of 1 output(s) with the first key; 0 already used it." in rotate()
    stored = Output.objects.get(pk=output.pk)
    assert stored.encrypted_secrets != token_under_old
    assert uses_current_key(stored.encrypted_secrets)
    Fernet(new).decrypt(stored.encrypted_secrets.encode())  # under the new key itself

    # Idempotent: a second run has nothing to do.
    assert "Re-encrypted the secrets of 0 output(s) with the first key; 1 already used it." in rotate()
    assert Output.objects.get(pk=output.pk).encrypted_secrets == stored.encrypted_secrets

    # The old key removed: the rotated secret reads with the new key alone.
    settings.SECRETS_ENCRYPTION_KEYS = [new]
    assert Output.objects.get(pk=output.pk).configuration()["api_key"] == MAILCHIMP_KEY


def test_a_secret_whose_key_was_removed_fails_clearly(settings):
    old, new = new_key(), new_key()
    settings.SECRETS_ENCRYPTION_KEYS = [old]
    output = mailchimp_output()
    settings.SECRETS_ENCRYPTION_KEYS = [new]  # the old key dropped before rotate_secrets ran
    with pytest.raises(ImproperlyConfigured, match=r"cannot be decrypted with any key of SECRETS_ENCRYPTION_KEYS"):
        Output.objects.get(pk=output.pk).configuration()
    with pytest.raises(CommandError, match=rf"1 output\(s\) have secrets no key .* \(output ids {output.pk}\)"):
        rotate()


def test_rotation_counts_only_outputs_with_secrets_and_leaves_other_settings_alone(settings):
    old, new = new_key(), new_key()
    settings.SECRETS_ENCRYPTION_KEYS = [old]
    first = mailchimp_output(name="First", double_opt_in=True)
    mailchimp_output(name="Second")
    settings.SECRETS_ENCRYPTION_KEYS = [new, old]
    assert "Re-encrypted the secrets of 2 output(s)" in rotate()
    first.refresh_from_db()
    assert first.settings["double_opt_in"] is True
    assert first.configuration()["api_key"] == MAILCHIMP_KEY
