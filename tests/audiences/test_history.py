"""Daily audience snapshots (audiences/history.py): sizes derived from the change log, adds and drops per
day, idempotent; the chart on the audience's page; `recompute_audiences` with its progress bar."""

from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import call_command
from django.utils import timezone

from audiences import profiles
from audiences.history import audience_charts, history_days, snapshot_audiences
from audiences.models import AudienceSnapshot, MembershipChange
from tests import factories

pytestmark = pytest.mark.django_db


def parisian(email: str, status: str = "Premium"):
    return profiles.profile_upsert(
        identities=[{"type": "email", "value": email}], attributes={"status": status, "favourite_city": "Paris"}
    ).profile


def test_snapshots_hold_each_days_size_adds_and_drops_and_rerunning_writes_the_same():
    audience = factories.active_audience()
    first, second = parisian("a@x.com"), parisian("b@x.com")
    MembershipChange.objects.filter(profile__in=[first, second]).update(at=timezone.now() - timedelta(days=2))
    third = parisian("d@x.com")
    MembershipChange.objects.filter(profile=third).update(at=timezone.now() - timedelta(days=1))
    parisian("c@x.com")
    parisian("b@x.com", status="Free")  # leaves today
    now = timezone.now()

    assert snapshot_audiences(days=3, now=now) == 3
    assert snapshot_audiences(days=3, now=now) == 3  # the same rows, rewritten

    rows = list(AudienceSnapshot.objects.filter(audience=audience).values_list("day", "size", "adds", "drops"))
    two_days_ago, yesterday, today = history_days(3, now)
    assert rows == [(two_days_ago, 2, 2, 0), (yesterday, 3, 1, 0), (today, 3, 1, 1)]


def test_the_audience_page_draws_its_history_as_inline_svg(admin_client):
    audience = factories.active_audience()
    parisian("a@x.com")
    url = f"/admin/audiences/audience/{audience.pk}/change/"
    assert "No snapshot yet" in admin_client.get(url).content.decode()

    snapshot_audiences(days=30)

    page = admin_client.get(url).content.decode()
    assert page.count("history-chart") == 2
    assert "Audience size per day" in page and "Adds and drops per day" in page
    assert audience_charts(audience.pk)["size"].count("<circle") == 30


def test_recompute_audiences_shows_a_progress_bar_and_what_it_did():
    factories.active_audience()
    factories.active_audience(
        name="Premium", criteria={"attribute": "status", "operator": "equals", "value": "Premium"}
    )
    parisian("a@x.com")
    out, err = StringIO(), StringIO()

    call_command("recompute_audiences", stdout=out, stderr=err)

    assert "2 recomputed, 0 failed" in out.getvalue()
    assert "recompute [" in err.getvalue() and "2/2 audiences 100%" in err.getvalue()


def test_recompute_audiences_refuses_unknown_ids():
    with pytest.raises(Exception, match="No audience with id 999"):
        call_command("recompute_audiences", "999", stdout=StringIO(), stderr=StringIO())
