"""Encryption at rest for partner secrets (Fernet: AES-128-CBC + HMAC-SHA256), with key rotation.

SECRETS_ENCRYPTION_KEYS lists the keys, newest first: the first encrypts, every one decrypts
(MultiFernet). To rotate: put a new key first, keep the old ones after it, deploy, run
`manage.py rotate_secrets` (re-encrypts every stored secret with the first key), then drop the old keys.
"""

from __future__ import annotations

import json
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured


@cache
def _fernets(keys: tuple[str, ...]) -> tuple[MultiFernet, Fernet]:
    if not keys:
        raise ImproperlyConfigured(
            "SECRETS_ENCRYPTION_KEYS is not set: partner secrets cannot be stored or read without it"
        )
    return MultiFernet([Fernet(key) for key in keys]), Fernet(keys[0])


def _multi() -> MultiFernet:
    return _fernets(tuple(settings.SECRETS_ENCRYPTION_KEYS))[0]


def _unreadable() -> ImproperlyConfigured:
    return ImproperlyConfigured(
        "Stored partner secrets cannot be decrypted with any key of SECRETS_ENCRYPTION_KEYS: the key they were "
        "encrypted with is not among them (was an old key removed before `manage.py rotate_secrets` ran?)"
    )


def encrypt_secrets(values: dict[str, str]) -> str:
    if not values:
        return ""
    return _multi().encrypt(json.dumps(values, sort_keys=True).encode()).decode()


def decrypt_secrets(token: str) -> dict[str, str]:
    if not token:
        return {}
    try:
        return json.loads(_multi().decrypt(token.encode()))
    except InvalidToken:
        raise _unreadable() from None


def uses_current_key(token: str) -> bool:
    """Whether this token is encrypted with the first (current) key."""
    _, current = _fernets(tuple(settings.SECRETS_ENCRYPTION_KEYS))
    try:
        current.decrypt(token.encode())
    except InvalidToken:
        return False
    return True


def reencrypt_secrets(token: str) -> str:
    """The same secrets, encrypted with the first key (decrypted with whichever key can)."""
    try:
        return _multi().rotate(token.encode()).decode()
    except InvalidToken:
        raise _unreadable() from None
