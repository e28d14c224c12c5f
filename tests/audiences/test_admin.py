from datetime import timedelta

import pytest
from django.utils import timezone

from audiences.models import Audience
from tests import factories

pytestmark = pytest.mark.django_db


def test_profile_page_shows_when_and_why_it_entered_an_audience(admin_client, rings):
    audience = factories.active_audience()
    profile = factories.parisian("history@example.com")
    page = admin_client.get(f"/admin/audiences/profile/{profile.pk}/change/").content.decode().lower()
    assert "audience history" in page
    assert audience.name.lower() in page and "entered" in page and "profile update" in page


def test_an_audience_page_and_the_list_show_its_recorded_failures(admin_client):
    """Issue 7 item 2 and issue 8 item 4: failures are recorded on the audience and shown, with reason and time."""
    broken = Audience.objects.create(
        name="Valid forever",
        criteria={"attribute": "valid_until", "operator": "date_after", "value": "9999-12-31"},
        status="active",
        evaluation_error="ValueError: a date after 9999-12-30: '9999-12-31'",
        evaluation_failed_at=timezone.now(),
        recompute_error="ValueError: a date after 9999-12-30: '9999-12-31'",
        recompute_failed_at=timezone.now(),
        recompute_failures=3,
        recompute_retry_at=timezone.now() + timedelta(minutes=4),
    )
    page = admin_client.get(f"/admin/audiences/audience/{broken.pk}/change/").content.decode()
    assert "a date after 9999-12-30" in page and "failed 3 time(s) in a row" in page and "next try" in page
    listing = admin_client.get("/admin/audiences/audience/").content.decode()
    assert "failing: see the audience" in listing


def test_the_api_shows_an_audiences_recorded_failures(api):
    broken = Audience.objects.create(name="Broken", criteria={"and": []}, status="active")
    Audience.objects.filter(pk=broken.pk).update(
        recompute_error="ValueError: x", recompute_failures=1, recompute_failed_at=timezone.now()
    )
    body = api.get(f"/api/v1/audiences/{broken.pk}/").json()
    assert (body["recompute_error"], body["recompute_failures"], body["evaluation_error"]) == ("ValueError: x", 1, "")
    assert body["recompute_failed_at"] and body["evaluation_failed_at"] is None
