"""Branding and details (issue 10 item 7): the admin names the product, "View site" leads somewhere real,
the periodic-task models are for superusers only, and Mailchimp's "Audience ID" says it is Mailchimp's."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission, User

from outputs.partners.mailchimp import Mailchimp

pytestmark = pytest.mark.django_db


def test_the_header_names_the_product_and_view_site_is_not_a_404(admin_client):
    index = admin_client.get("/admin/").content.decode()
    assert "Audience Forwarding" in index and "Django administration" not in index
    assert 'href="/api/v1/"' in index
    assert admin_client.get("/api/v1/").status_code == 200


def test_periodic_tasks_are_hidden_from_non_superusers(client, admin_client):
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    # Even given every permission on them, a non-superuser sees none of beat's models.
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="django_celery_beat"))
    client.force_login(staff)
    assert "Periodic tasks" not in client.get("/admin/").content.decode()
    assert client.get("/admin/django_celery_beat/periodictask/").status_code == 403
    assert "Periodic tasks" in admin_client.get("/admin/").content.decode()
    assert admin_client.get("/admin/django_celery_beat/periodictask/").status_code == 200


def test_mailchimps_audience_id_is_labelled_as_mailchimps_list():
    (list_id,) = Mailchimp.connection_settings
    assert list_id.label == "Mailchimp audience (list) ID"
