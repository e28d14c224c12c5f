"""Create an Events API input and print its key and secret (the secret is shown this once)."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from audiences.inputs import input_create


class Command(BaseCommand):
    help = "Create an Events API input; prints its key and secret (the secret cannot be shown again)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("name", help="a name for the input, e.g. 'web backend'")

    def handle(self, *args, name: str, **options) -> None:
        try:
            instance, secret = input_create(name)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(f"key: {instance.key}\nsecret: {secret}\n")
        self.stdout.write("Store the secret now: it is not kept and cannot be shown again.\n")
