"""Re-encrypt every stored partner secret with the first key of SECRETS_ENCRYPTION_KEYS."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from outputs.services import output_secrets_reencrypt


class Command(BaseCommand):
    help = (
        "Re-encrypt every output's stored secrets with the first key of SECRETS_ENCRYPTION_KEYS (run after putting a "
        "new key first; then the old keys can be removed). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        result = output_secrets_reencrypt()
        self.stdout.write(
            f"Re-encrypted the secrets of {result.reencrypted} output(s) with the first key; "
            f"{result.already_current} already used it."
        )
        if result.unreadable:
            raise CommandError(
                f"{len(result.unreadable)} output(s) have secrets no key of SECRETS_ENCRYPTION_KEYS decrypts "
                f"(output ids {', '.join(map(str, result.unreadable))}): add the key they were encrypted with, "
                "or enter their secrets again in the admin."
            )
