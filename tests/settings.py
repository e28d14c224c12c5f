"""Settings for the test run: config.settings, with keys made for this run only.

Production refuses to start without SECRET_KEY and SECRETS_ENCRYPTION_KEYS (config/settings.py). The
tests run without the operator setting them (pyproject points pytest-django here), with random keys
made at start: nothing committed, nothing that outlives the run, nothing production could pick up.
Subprocesses that the tests start (Celery worker, gunicorn) inherit them through the environment.
"""

import os
import secrets

from cryptography.fernet import Fernet

os.environ.setdefault("SECRET_KEY", secrets.token_urlsafe(50))
if not (os.environ.get("SECRETS_ENCRYPTION_KEYS") or os.environ.get("SECRETS_ENCRYPTION_KEY")):
    os.environ["SECRETS_ENCRYPTION_KEYS"] = Fernet.generate_key().decode()

from config.settings import *  # noqa: F403

# Rings are counted by the tests (the `rings` fixture) and the broker's Redis is shared between runs: no
# coalescing marks, except in the tests of the marks (tests/forwarding/test_doorbell.py).
FORWARDING = {**FORWARDING, "COALESCE_RINGS": False}  # noqa: F405
