"""`manage.py demo` loads the tutorial through the Events API path (run by `make run`)."""

import io
import os
import shlex
import stat

import pytest
from django.core.management import call_command

from audiences.inputs import authenticate
from audiences.models import Audience, Identity, Input, Profile
from forwarding.models import PendingChange

pytestmark = pytest.mark.django_db


def test_demo_builds_potential_parisians_with_50_emails_and_80_gaids(rings, django_capture_on_commit_callbacks):
    out = io.StringIO()
    with django_capture_on_commit_callbacks(execute=True):
        call_command("demo", stdout=out)
    audience = Audience.objects.get(name="Potential Parisians")
    members = audience.memberships.values("profile_id")
    assert audience.memberships.count() == 100
    assert Profile.objects.count() == 140
    assert Identity.objects.filter(profile_id__in=members, type="email").count() == 50
    assert Identity.objects.filter(profile_id__in=members, type="google_advertising_id").count() == 80
    pending = PendingChange.objects.filter(connection__audience=audience)
    assert set(pending.values_list("action", flat=True)) == {"add"}
    # Connected to the three local partners: Mailchimp takes the emails, Braze the customer ids and emails, Meta
    # the emails and GAIDs.
    per_partner = {
        key: pending.filter(connection__output__partner_key=key).count() for key in ("mailchimp", "braze", "meta")
    }
    assert per_partner == {"mailchimp": 50, "braze": 150, "meta": 130}
    meta = audience.connections.get(output__partner_key="meta")
    assert meta.settings["audience_id"] == "120000000000000001" and not meta.settings["created_on_connect"]
    assert ("forwarding.tasks.upload_connection", (meta.pk,), None) in rings  # its first upload, at once
    assert Input.objects.filter(name="Demo app").exists()
    assert "password:" in out.getvalue()
    # Loading again changes nothing.
    call_command("demo", stdout=io.StringIO())
    assert Profile.objects.count() == 140


def printed_command(output: str) -> list[str]:
    line = next(line for line in output.splitlines() if "scripts/send_events.py" in line and "--secret=" in line)
    return shlex.split(line)


def test_demo_prints_the_send_events_command_with_the_inputs_real_key_and_secret_on_every_run(rings, tmp_path):
    credentials = tmp_path / "demo-input.json"
    out = io.StringIO()
    call_command("demo", web_url="http://127.0.0.1:8123", credentials_file=str(credentials), stdout=out)
    command = printed_command(out.getvalue())
    assert command[:4] == [".venv/bin/python", "scripts/send_events.py", "--host", "http://127.0.0.1:8123/v2"]
    options = dict(part.split("=", 1) for part in command if part.startswith("--") and "=" in part)
    demo_input = Input.objects.get(name="Demo app")
    assert authenticate(options["--key"], options["--secret"]) == demo_input
    assert stat.S_IMODE(os.stat(credentials).st_mode) == 0o600

    # Run again: the same command, from the credentials file (the secret itself is stored hashed).
    again = io.StringIO()
    call_command("demo", web_url="http://127.0.0.1:8123", credentials_file=str(credentials), stdout=again)
    assert printed_command(again.getvalue()) == command

    # The file lost: the demo input gets a new secret, printed; the old one stops working.
    credentials.unlink()
    renewed = io.StringIO()
    call_command("demo", web_url="http://127.0.0.1:8123", credentials_file=str(credentials), stdout=renewed)
    new_options = dict(part.split("=", 1) for part in printed_command(renewed.getvalue()) if "=" in part)
    assert new_options["--secret"] != options["--secret"]
    assert authenticate(new_options["--key"], new_options["--secret"]) == demo_input
    assert authenticate(options["--key"], options["--secret"]) is None
