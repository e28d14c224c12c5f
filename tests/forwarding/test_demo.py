"""`manage.py demo` loads the tutorial through the Events API path (run by `make run`)."""

import io

import pytest
from django.core.management import call_command

from audiences.models import Audience, Identity, Input, Profile
from forwarding.models import PendingChange

pytestmark = pytest.mark.django_db


def test_demo_builds_potential_parisians_with_50_emails_and_80_gaids(rings):
    out = io.StringIO()
    call_command("demo", stdout=out)
    audience = Audience.objects.get(name="Potential Parisians")
    members = audience.memberships.values("profile_id")
    assert audience.memberships.count() == 100
    assert Profile.objects.count() == 140
    assert Identity.objects.filter(profile_id__in=members, type="email").count() == 50
    assert Identity.objects.filter(profile_id__in=members, type="google_advertising_id").count() == 80
    pending = PendingChange.objects.filter(connection__audience=audience)
    assert pending.count() == 50 and set(pending.values_list("action", flat=True)) == {"add"}
    assert Input.objects.filter(name="Demo app").exists()
    assert "password:" in out.getvalue()
    # Loading again changes nothing.
    call_command("demo", stdout=io.StringIO())
    assert Profile.objects.count() == 140
