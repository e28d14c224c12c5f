"""Encryption at rest for partner secrets (Fernet: AES-128-CBC + HMAC-SHA256)."""

from __future__ import annotations

import base64
import hashlib
import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernet() -> Fernet:
    key = settings.SECRETS_ENCRYPTION_KEY
    if not key:
        # Derived, so a development setup works without one more variable.
        key = base64.urlsafe_b64encode(hashlib.sha256(b"secrets:" + settings.SECRET_KEY.encode()).digest())
    try:
        return Fernet(key)
    except ValueError as exc:
        raise ImproperlyConfigured("SECRETS_ENCRYPTION_KEY must be a Fernet key (32 url-safe base64 bytes)") from exc


def encrypt_secrets(values: dict[str, str]) -> str:
    if not values:
        return ""
    return _fernet().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt_secrets(token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        return json.loads(_fernet().decrypt(token.encode()))
    except InvalidToken as exc:
        raise ImproperlyConfigured(
            "Stored partner secrets cannot be decrypted: SECRETS_ENCRYPTION_KEY (or SECRET_KEY) changed"
        ) from exc
