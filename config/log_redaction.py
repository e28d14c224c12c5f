"""Keep personal data out of logs.

PostgreSQL explains a failed constraint in a DETAIL line that quotes the row's values, e.g.
``DETAIL:  Key (type, value)=(email, a@b.com) already exists.`` or ``DETAIL:  Failing row contains
(...)``. Those lines reach logs inside exception messages and tracebacks (Django's 500 log, Celery's
task failures). This filter, installed on every handler in LOGGING (and gunicorn's, config/gunicorn.py),
replaces what follows ``DETAIL:`` with ``[redacted]`` in the message and in the formatted traceback.
"""

from __future__ import annotations

import logging
import re
import traceback

DETAIL = re.compile(r"(DETAIL:\s*)[^\n]*")
REDACTED = r"\1[redacted]"


def redact(text: str) -> str:
    return DETAIL.sub(REDACTED, text)


class RedactPersonalData(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = redact(message)
        if redacted != message:
            record.msg, record.args = redacted, None
        if record.exc_info and record.exc_info[1] is not None:
            # Formatted here (a formatter would otherwise format the raw exception after us).
            record.exc_text = redact("".join(traceback.format_exception(*record.exc_info)).rstrip("\n"))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True
