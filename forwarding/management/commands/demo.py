"""Load the tutorial's demo through the product's own paths.

The audience "Potential Parisians" (mParticle's example: played a "Destination Intro" video about Paris
at least once in the last 30 days AND status is Premium) ends up with 100 members, of which 50 have an
email and 80 an Android advertising id, beside 40 profiles that do not match (Free users, and Premium
users whose video was about Rome). The data goes in as Events API batches of an input "Demo app", a
Mailchimp output points at the local Mailchimp server and is connected to the list
`potential-parisians`, a Braze and a Meta output (the local Braze and Meta servers) are connected too, and
an admin user is created, its password printed.

It ends by printing the exact command that sends an event as the demo input (its real key and secret).
The secret is stored hashed, so with --credentials-file (as `make run` passes, var/demo-input.json) the
demo keeps it there to print it again on the next run; when that file is missing or stale, the demo
input gets a new secret."""

from __future__ import annotations

import json
import os
import secrets
import shlex
import uuid
from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from audiences import services as audience_services
from audiences.events_api.ingest import ingest_batches
from audiences.events_api.parsing import parse_batch
from audiences.inputs import authenticate, input_create, input_reset_secret
from audiences.models import Audience, Input
from config import queueing
from forwarding import bulk
from forwarding.lifecycle import connection_create
from outputs.services import output_create

DEMO_API_KEY = "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0-us6"
DEMO_LIST_ID = "potential-parisians"
DEMO_INPUT = "Demo app"
DEMO_BRAZE_KEY = "d3m0-braze-rest-key"
DEMO_META_TOKEN = "d3m0-meta-access-token"
# The local Meta server creates this Custom Audience at start (Procfile): the demo loads before it runs, so the
# connection names it instead of creating one on connect.
DEMO_META_AUDIENCE_ID = "120000000000000001"
CRITERIA = {
    "and": [
        {
            "event": "Destination Intro",
            "attributes": [{"attribute": "city", "operator": "equals", "value": "Paris"}],
            "frequency": {"operator": "at_least", "count": 1},
            "recency": {"within_last": {"amount": 30, "unit": "days"}},
        },
        {"attribute": "status", "operator": "equals", "value": "Premium"},
    ]
}


def demo_gaid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo-gaid-{n}"))


def demo_batch(n: int, *, email: bool, gaid: bool, status: str, city: str, days_ago: int) -> dict:
    """One Events API batch, as the mParticle SDKs send them."""
    played_at = timezone.now() - timedelta(days=days_ago)
    batch: dict = {
        "environment": "production",
        "source_request_id": f"demo-{n}",
        "user_identities": {"customer_id": f"demo-{n}"},
        "user_attributes": {"status": status, "$FirstName": f"Traveller {n}"},
        "events": [
            {
                "event_type": "custom_event",
                "data": {
                    "event_name": "Destination Intro",
                    "custom_event_type": "media",
                    "timestamp_unixtime_ms": int(played_at.timestamp() * 1000),
                    "custom_attributes": {"city": city},
                },
            }
        ],
    }
    if email:
        batch["user_identities"]["email"] = f"traveller{n:03d}@example.com"
    if gaid:
        batch["device_info"] = {"platform": "Android", "android_advertising_id": demo_gaid(n)}
    return batch


def demo_batches() -> list[dict]:
    """The tutorial's 140 travellers: 100 members (emails for the first 50, advertising ids for the last 80),
    and 40 others: Free users who watched Paris, and Premium users who watched Rome."""
    return [
        *(
            demo_batch(n, email=n < 50, gaid=n >= 20, status="Premium", city="Paris", days_ago=n % 25)
            for n in range(100)
        ),
        *(
            demo_batch(
                100 + n,
                email=True,
                gaid=True,
                status="Free" if n % 2 else "Premium",
                city="Paris" if n % 2 else "Rome",
                days_ago=n % 25,
            )
            for n in range(40)
        ),
    ]


class Command(BaseCommand):
    help = "Load the demo data of the tutorial (idempotent)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--admin-user", default="admin")
        parser.add_argument("--web-url", default="http://127.0.0.1:8000", help="where the web process answers")
        parser.add_argument(
            "--credentials-file",
            help="keep the demo input's key and secret in this file (mode 600), to print them on every run",
        )

    def handle(self, *args, admin_user: str, web_url: str, credentials_file: str | None, **options) -> None:
        password = self._admin(admin_user)
        created_secret = None
        if Audience.objects.filter(name="Potential Parisians").exists():
            self.stdout.write("Demo data already loaded.")
        else:
            created_secret = self._load()
        self.stdout.write(self.style.SUCCESS("Demo loaded."))
        if password:
            self.stdout.write(f"Admin user: {admin_user}  password: {password}")
        else:
            self.stdout.write(
                f"Admin user: {admin_user} (password unchanged; reset it with `manage.py changepassword`)"
            )
        source = Input.objects.filter(name=DEMO_INPUT).first()
        if source is None:
            return
        secret = created_secret or self._kept_secret(source, credentials_file)
        if secret is None:
            self.stdout.write(f"Events API input '{DEMO_INPUT}': key {source.key} (its secret was shown once)")
            return
        if credentials_file:
            self._keep_secret(source, secret, credentials_file)
        command = [
            ".venv/bin/python",
            "scripts/send_events.py",
            "--host",
            f"{web_url.rstrip('/')}/v2",
            f"--key={source.key}",
            f"--secret={secret}",
            "--email",
            "new@example.com",
            "--city",
            "Paris",
        ]
        self.stdout.write(
            f"Events API input '{DEMO_INPUT}': key {source.key}  secret {secret}\n"
            "Send an event with the official mParticle SDK (new@example.com joins 'Potential Parisians'):\n"
            f"  {shlex.join(command)}"
        )

    def _kept_secret(self, source: Input, credentials_file: str | None) -> str | None:
        """The demo input's secret from the credentials file, or a new one when the file is missing or stale."""
        if not credentials_file:
            return None
        try:
            with open(credentials_file) as file:
                kept = json.load(file)
            if authenticate(kept["key"], kept["secret"]) == source:
                return kept["secret"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return input_reset_secret(input=source)

    def _keep_secret(self, source: Input, secret: str, credentials_file: str) -> None:
        descriptor = os.open(credentials_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as file:
            json.dump({"key": source.key, "secret": secret}, file)

    def _admin(self, username: str) -> str | None:
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            return None
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username, f"{username}@example.com", password)
        return password

    @transaction.atomic
    def _load(self) -> str:
        """Load the demo; returns the demo input's secret."""
        audience = audience_services.audience_create(
            name="Potential Parisians",
            external_name="Potential Parisians",
            description="Premium users who played the Paris 'Destination Intro' video in the last 30 days.",
            criteria=CRITERIA,
            status="draft",
        )
        output = output_create(
            name="Mailchimp (local)",
            partner_key="mailchimp",
            settings={"api_key": DEMO_API_KEY, "email_type": "html", "double_opt_in": True},
        )
        connection_create(audience=audience, output=output, settings={"list_id": DEMO_LIST_ID})
        braze = output_create(
            name="Braze (local)", partner_key="braze", settings={"api_key": DEMO_BRAZE_KEY, "instance": "US-03"}
        )
        connection_create(audience=audience, output=braze, settings={})
        meta = output_create(
            name="Meta (local)",
            partner_key="meta",
            settings={"access_token": DEMO_META_TOKEN, "ad_account_id": "1"},
        )
        meta_connection = connection_create(
            audience=audience, output=meta, settings={"audience_id": DEMO_META_AUDIENCE_ID}
        )
        # Meta is bulk (an upload every 3 hours or 750,000 changes): the demo asks for its first upload at once.
        transaction.on_commit(lambda: queueing.send_safely(bulk.UPLOAD_TASK, meta_connection.pk))
        # Active before the data arrives: members enter in real time as the batches are ingested.
        audience = audience_services.audience_update(audience=audience, status="active")
        source, secret = input_create(name=DEMO_INPUT)
        batches = demo_batches()
        ingest_batches(source, [parse_batch(b, path=f"[{i}]") for i, b in enumerate(batches)])
        audience.refresh_from_db()
        self.stdout.write(
            f"Audience '{audience.name}': {audience.memberships.count()} members; "
            f"output '{output.name}' connected to list '{DEMO_LIST_ID}', '{braze.name}' and '{meta.name}' "
            f"(Custom Audience {DEMO_META_AUDIENCE_ID}, uploaded at once)."
        )
        return secret
