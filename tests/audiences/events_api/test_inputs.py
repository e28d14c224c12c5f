"""Inputs: the secret is returned once and stored as its SHA-256 digest; authenticate checks both."""

from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command

from audiences.inputs import authenticate, input_create
from audiences.models import Input

pytestmark = pytest.mark.django_db


def test_input_create_returns_secret_once_and_stores_its_digest():
    instance, secret = input_create("web backend")
    instance.refresh_from_db()
    assert len(instance.key) == 32
    assert len(secret) >= 40
    assert instance.secret_sha256 == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in {v for v in Input.objects.values_list("name", "key", "secret_sha256").get()}


def test_input_names_are_unique():
    input_create("web backend")
    with pytest.raises(ValidationError):
        input_create("web backend")


def test_authenticate_accepts_the_right_secret_only():
    instance, secret = input_create("web backend")
    assert authenticate(instance.key, secret) == instance
    assert authenticate(instance.key, secret + "x") is None
    assert authenticate("unknown", secret) is None
    assert authenticate(instance.key, "") is None


def test_authenticate_refuses_an_inactive_input():
    instance, secret = input_create("web backend")
    Input.objects.filter(pk=instance.pk).update(is_active=False)
    assert authenticate(instance.key, secret) is None


def test_create_input_command_prints_key_and_secret(capsys):
    call_command("create_input", "ios app")
    out = capsys.readouterr().out
    instance = Input.objects.get(name="ios app")
    secret = out.split("secret: ")[1].split()[0]
    assert f"key: {instance.key}" in out
    assert authenticate(instance.key, secret) == instance


def test_admin_shows_the_secret_once(admin_client):
    response = admin_client.post(
        "/admin/audiences/input/add/", {"name": "partner feed", "is_active": "on"}, follow=True
    )
    assert response.status_code == 200
    instance = Input.objects.get(name="partner feed")
    shown = [str(m) for m in response.context["messages"] if "secret" in str(m)]
    assert len(shown) == 1
    secret = shown[0].split("secret ")[1].split(".")[0]
    assert authenticate(instance.key, secret) == instance
    # The change page never shows it again.
    page = admin_client.get(f"/admin/audiences/input/{instance.pk}/change/").content.decode()
    assert instance.key in page
    assert secret not in page
