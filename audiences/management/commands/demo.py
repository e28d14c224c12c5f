"""Load the tutorial's demo: "Potential Parisians" (100 members: 50 with an email, 80 with an
Android advertising id), 40 profiles that do not match, a Mailchimp output pointed at the local
Mailchimp server, the connection, and an admin user whose password is printed."""

from __future__ import annotations

import secrets
import uuid

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from audiences import services as audience_services
from audiences.models import Audience
from connections.models import Connection
from connections.services import connection_create
from outputs.models import Output
from outputs.services import output_create

DEMO_API_KEY = "d3m0d3m0d3m0d3m0d3m0d3m0d3m0d3m0-us6"
DEMO_LIST_ID = "potential-parisians"
CRITERIA = {
    "and": [
        {"attribute": "status", "operator": "equals", "value": "Premium"},
        {"attribute": "favourite_city", "operator": "equals", "value": "Paris"},
    ]
}


def demo_gaid(n: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"demo-gaid-{n}"))


class Command(BaseCommand):
    help = "Load the demo data of the tutorial (idempotent)."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--admin-user", default="admin")

    def handle(self, *args, admin_user: str, **options) -> None:
        password = self._admin(admin_user)
        if Audience.objects.filter(name="Potential Parisians").exists():
            self.stdout.write("Demo data already loaded.")
        else:
            self._load()
        self.stdout.write(self.style.SUCCESS("Demo loaded."))
        if password:
            self.stdout.write(f"Admin user: {admin_user}  password: {password}")
        else:
            self.stdout.write(
                f"Admin user: {admin_user} (password unchanged; reset it with `manage.py changepassword`)"
            )

    def _admin(self, username: str) -> str | None:
        user_model = get_user_model()
        if user_model.objects.filter(username=username).exists():
            return None
        password = secrets.token_urlsafe(12)
        user_model.objects.create_superuser(username, f"{username}@example.com", password)
        return password

    @transaction.atomic
    def _load(self) -> None:
        audience = audience_services.audience_create(
            name="Potential Parisians",
            external_name="Potential Parisians",
            description="Premium users who love Paris (the tutorial's example).",
            criteria=CRITERIA,
            status="draft",
        )
        for n in range(100):
            identities = []
            if n < 50:
                identities.append({"type": "email", "value": f"parisian{n:03d}@example.com"})
            if n >= 20:
                identities.append({"type": "google_advertising_id", "value": demo_gaid(n)})
            audience_services.profile_upsert(
                identities=identities,
                attributes={"status": "Premium", "favourite_city": "Paris", "$FirstName": f"Parisian {n}"},
            )
        for n in range(40):
            audience_services.profile_upsert(
                identities=[
                    {"type": "email", "value": f"other{n:03d}@example.com"},
                    {"type": "google_advertising_id", "value": demo_gaid(1000 + n)},
                ],
                attributes={
                    "status": "Free" if n % 2 else "Premium",
                    "favourite_city": "Lyon" if n % 2 == 0 else "Paris",
                },
            )
        # Activate, then compute now rather than waiting for the worker: the connection's
        # backfill below then queues the 50 emails at once.
        audience = audience_services.audience_update(audience=audience, status="active")
        audience_services.audience_recompute(audience_id=audience.pk)
        output = output_create(
            name="Mailchimp (local)",
            partner_key="mailchimp",
            settings={
                "api_key": DEMO_API_KEY,
                "email_type": "html",
                "double_opt_in": True,
                "delete_on_subscription_end": True,
            },
        )
        connection_create(audience=audience, output=output, settings={"list_id": DEMO_LIST_ID})
        self.stdout.write(
            f"Audience '{audience.name}': 100 members (50 with an email, 80 with a GAID), 40 other profiles; "
            f"output '{output.name}' connected to list '{DEMO_LIST_ID}' "
            f"({Connection.objects.count()} connection, {Output.objects.count()} output)."
        )
