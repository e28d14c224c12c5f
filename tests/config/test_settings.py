"""The settings refuse to start without real keys (no default key, nothing derived), read the partner-secret
keys for rotation, and `check --deploy` is clean with the README's production variables."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured

from outputs.crypto import encrypt_secrets

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = ROOT / "config" / "settings.py"
KEY_VARIABLES = ("SECRET_KEY", "SECRETS_ENCRYPTION_KEYS", "SECRETS_ENCRYPTION_KEY", "DEBUG")


def load_settings(monkeypatch, **environment: str) -> dict:
    """Execute config/settings.py afresh with exactly these key variables set."""
    for name in KEY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(SETTINGS))


def fernet_key() -> str:
    return Fernet.generate_key().decode()


def test_without_keys_and_without_debug_the_settings_refuse_naming_both_variables(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match=r"^SECRET_KEY and SECRETS_ENCRYPTION_KEYS must be set"):
        load_settings(monkeypatch)


def test_a_missing_encryption_key_alone_is_refused_too(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match=r"^SECRETS_ENCRYPTION_KEYS must be set"):
        load_settings(monkeypatch, SECRET_KEY="k" * 50)


def test_debug_starts_without_keys_but_stores_no_partner_secret(monkeypatch, settings):
    loaded = load_settings(monkeypatch, DEBUG="true")
    assert loaded["SECRETS_ENCRYPTION_KEYS"] == []
    settings.SECRETS_ENCRYPTION_KEYS = loaded["SECRETS_ENCRYPTION_KEYS"]
    with pytest.raises(ImproperlyConfigured, match="SECRETS_ENCRYPTION_KEYS is not set"):
        encrypt_secrets({"api_key": "x"})


def test_keys_for_rotation_newest_first_and_the_one_key_form(monkeypatch):
    new, old = fernet_key(), fernet_key()
    assert load_settings(monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEYS=f"{new}, {old}")[
        "SECRETS_ENCRYPTION_KEYS"
    ] == [new, old]
    assert load_settings(monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEY=old)["SECRETS_ENCRYPTION_KEYS"] == [
        old
    ]
    # Both set: the single key must be one of the list (during a rotation), else it is refused.
    assert load_settings(
        monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEYS=f"{new},{old}", SECRETS_ENCRYPTION_KEY=old
    )["SECRETS_ENCRYPTION_KEYS"] == [new, old]
    with pytest.raises(ImproperlyConfigured, match="disagree"):
        load_settings(monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEYS=new, SECRETS_ENCRYPTION_KEY=old)


def test_a_malformed_encryption_key_is_refused_without_echoing_it(monkeypatch):
    with pytest.raises(ImproperlyConfigured, match="key 2 is not a Fernet key") as caught:
        load_settings(monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEYS=f"{fernet_key()},not-a-key-1234")
    assert "not-a-key-1234" not in str(caught.value)


def clean_environment(**environment: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in KEY_VARIABLES}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return {**env, **environment}


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_a_fresh_clone_gets_its_var_folder_for_the_sqlite_default(monkeypatch, tmp_path):
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    loaded = load_settings(monkeypatch, SECRET_KEY="k" * 50, SECRETS_ENCRYPTION_KEYS=fernet_key())
    assert (tmp_path / "var").is_dir()
    assert loaded["DATABASES"]["default"]["NAME"] == str(tmp_path / "var" / "db.sqlite3")
    assert "journal_mode=WAL" in loaded["DATABASES"]["default"]["OPTIONS"]["init_command"]


def test_the_service_refuses_to_start_without_keys():
    result = manage("check", env=clean_environment())
    assert result.returncode != 0
    assert "ImproperlyConfigured: SECRET_KEY and SECRETS_ENCRYPTION_KEYS must be set" in result.stderr


def production_environment() -> dict[str, str]:
    """The variables of the README's production block, placeholders filled in."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"### Production\n.*?```sh\n(.*?)```", readme, re.S)
    assert block, "README has a '### Production' section with a sh block of variables"
    values = dict(re.findall(r"^([A-Z_]+)=(\S+)", block.group(1), re.M))
    filled = {
        "SECRET_KEY": "Zq3" + Fernet.generate_key().decode() * 2,
        "SECRETS_ENCRYPTION_KEYS": fernet_key(),
        "DATABASE_URL": os.environ.get("DATABASE_URL") or "sqlite:///:memory:",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    for name, value in values.items():
        if value.startswith("<"):
            assert name in filled, f"no test value for the README's placeholder {name}"
            values[name] = filled[name]
    return values


def test_check_deploy_is_clean_with_the_documented_production_variables():
    variables = production_environment()
    assert {"SECURE_SSL_REDIRECT", "SECURE_HSTS_SECONDS", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE"} <= set(
        variables
    )
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=clean_environment(**variables))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout


def test_check_deploy_warns_when_a_production_variable_is_missing():
    variables = production_environment()
    del variables["SECURE_SSL_REDIRECT"]
    result = manage("check", "--deploy", "--fail-level", "WARNING", env=clean_environment(**variables))
    assert result.returncode != 0
    assert "security.W008" in result.stderr + result.stdout
