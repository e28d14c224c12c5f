import pytest

from tests import factories

pytestmark = pytest.mark.django_db


def test_profile_page_shows_when_and_why_it_entered_an_audience(admin_client, rings):
    audience = factories.active_audience()
    profile = factories.parisian("history@example.com")
    page = admin_client.get(f"/admin/audiences/profile/{profile.pk}/change/").content.decode().lower()
    assert "audience history" in page
    assert audience.name.lower() in page and "entered" in page and "profile update" in page
