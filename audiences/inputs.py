"""Inputs: the sources that send data to the Events API, and how a request proves it is one.

An input's key is public (it names the input); its secret is shown once, when the input is created,
and only its SHA-256 digest is stored. The secret is 32 random bytes, so a fast digest is enough
(a slow password hash would cost every request hundreds of milliseconds; see Input's docstring).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from django.core.exceptions import ValidationError
from django.db import IntegrityError

from audiences.models import Input


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def input_create(name: str) -> tuple[Input, str]:
    """Create an input; returns it with its secret, which is not stored and cannot be shown again."""
    name = (name or "").strip()
    if not name:
        raise ValidationError({"name": ["This field may not be blank."]})
    if len(name) > 100:
        raise ValidationError({"name": ["Ensure this field has no more than 100 characters."]})
    if Input.objects.filter(name=name).exists():
        raise ValidationError({"name": [f"An input named '{name}' already exists."]})
    secret = secrets.token_urlsafe(32)
    try:
        instance = Input.objects.create(name=name, key=secrets.token_hex(16), secret_sha256=secret_digest(secret))
    except IntegrityError:  # the same name created meanwhile
        raise ValidationError({"name": [f"An input named '{name}' already exists."]}) from None
    return instance, secret


def authenticate(key: str, secret: str) -> Input | None:
    """The active input with this key and secret, else None (unknown key, wrong secret, inactive)."""
    # Keys are 32 hex digits: anything longer, or with a NUL (which PostgreSQL cannot compare), is no key.
    if not key or not secret or len(key) > 64 or "\x00" in key:
        return None
    instance = Input.objects.filter(key=key).first()
    # Compare digests in constant time even when the key is unknown, so timing says nothing.
    expected = instance.secret_sha256 if instance else "0" * 64
    if not hmac.compare_digest(expected, secret_digest(secret)) or instance is None:
        return None
    return instance if instance.is_active else None


def input_reset_secret(*, input: Input) -> str:
    """Give the input a new secret (the old one stops working at once); returns it, shown this once."""
    secret = secrets.token_urlsafe(32)
    Input.objects.filter(pk=input.pk).update(secret_sha256=secret_digest(secret))
    input.secret_sha256 = secret_digest(secret)
    return secret
