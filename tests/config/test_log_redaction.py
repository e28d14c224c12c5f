"""No personal data in logs: PostgreSQL's DETAIL lines (which quote a failed row's values, e.g. an email)
are redacted by the filter LOGGING installs on its handler, in messages and in tracebacks."""

from __future__ import annotations

import io
import logging

import pytest
from django.db import IntegrityError, connection, transaction

from audiences.models import Identity, Profile
from config.log_redaction import RedactPersonalData, redact
from tests.conftest import service_missing

EMAIL = "jeanne.dupont@example.com"


@pytest.fixture
def console_output():
    """What LOGGING's own console handler (with its filters) writes, captured."""
    handler = next(h for h in logging.getLogger().handlers if h.get_name() == "console")
    assert any(isinstance(f, RedactPersonalData) for f in handler.filters), "LOGGING installs the filter"
    stream = io.StringIO()
    previous = handler.setStream(stream)
    try:
        yield stream
    finally:
        handler.setStream(previous)


@pytest.mark.django_db
def test_a_real_unique_violation_logged_with_its_traceback_shows_no_email(console_output):
    if connection.vendor != "postgresql":
        service_missing("the DETAIL line is PostgreSQL's: set DATABASE_URL=postgres://...")
    profile = Profile.objects.create()
    Identity.objects.create(profile=profile, type="email", value=EMAIL)
    try:
        with transaction.atomic():
            Identity.objects.create(profile=profile, type="email", value=EMAIL)
    except IntegrityError as exc:
        assert EMAIL in str(exc) and "DETAIL:" in str(exc)  # what PostgreSQL put in the exception
        logging.getLogger("audiences").exception("Could not store identity: %s", exc)
    written = console_output.getvalue()
    assert "Could not store identity" in written
    assert "Traceback" in written and "UniqueViolation" in written
    assert "DETAIL: [redacted]" in written or "DETAIL:  [redacted]" in written
    assert EMAIL not in written


def test_redact_keeps_the_rest_of_the_message():
    text = 'duplicate key value violates unique constraint "x"\nDETAIL:  Failing row contains (1, a@b.com).\nmore'
    assert redact(text) == 'duplicate key value violates unique constraint "x"\nDETAIL:  [redacted]\nmore'
