"""Logs an operator can use: who a line is about, in JSON when LOG_FORMAT=json, without the periodic noise.

* Context (contextvars): the request id (``RequestIdMiddleware``: the client's X-Request-ID when it looks
  like one, else a new one, echoed in the response; carried to the tasks the request queues), the task id
  (set before each task runs, cleared after: Celery's own "succeeded" line carries it), and the connection
  id and partner of a delivery (``bind_log_context``, from forwarding's tasks). ``AddLogContext``, a filter on
  every handler, puts them on each record.
* ``JsonFormatter``: one JSON object a line (time, level, logger, message, the context, the exception).
* ``QuietPeriodicTasks``: Celery's "received" and "succeeded" lines of the frequent periodic tasks (the
  sweep, the heartbeat, the time-based recompute) are logged at DEBUG, not INFO; those tasks log their own
  INFO line when they found something to do.

No personal data: the context holds ids and a partner's key only; task arguments are never logged.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from celery.signals import before_task_publish, task_postrun, task_prerun
from django.http import HttpRequest

CONTEXT_FIELDS = ("request_id", "task_id", "connection_id", "partner")
_context: ContextVar[dict[str, Any] | None] = ContextVar("log_context", default=None)
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Periodic tasks whose Celery bookkeeping lines are DEBUG (they log at INFO when they did something).
QUIET_TASKS = {
    "forwarding.tasks.sweep_pending_work",
    "config.health.heartbeat",
    "audiences.tasks.recompute_time_based_audiences",
}


def log_context() -> dict[str, Any]:
    return dict(_context.get() or {})


def bind_log_context(**values: Any) -> None:
    """Add to the current context (a task's is cleared when it ends, a request's when it is answered)."""
    _context.set({**(_context.get() or {}), **{k: v for k, v in values.items() if v not in (None, "")}})


def clear_log_context() -> None:
    _context.set(None)


# --- where the context comes from --------------------------------------------------------------


class RequestIdMiddleware:
    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        given = request.headers.get("X-Request-ID", "")
        request_id = given if REQUEST_ID.match(given) else uuid.uuid4().hex
        token = _context.set({"request_id": request_id})
        try:
            response = self.get_response(request)
        finally:
            _context.reset(token)
        response["X-Request-ID"] = request_id
        return response


@before_task_publish.connect
def _carry_request_id(headers: dict | None = None, **_: Any) -> None:
    request_id = log_context().get("request_id")
    if request_id and headers is not None:
        headers.setdefault("request_id", request_id)


@task_prerun.connect
def _task_started(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    clear_log_context()
    bind_log_context(task_id=task_id, request_id=getattr(getattr(task, "request", None), "request_id", None))


@task_postrun.connect
def _task_ended(**_: Any) -> None:
    clear_log_context()


# --- filters and formatter (installed on the handlers by LOGGING) ------------------------------


class AddLogContext(logging.Filter):
    """Puts the context on the record (``record.request_id`` ..., and ``record.context`` as text for the
    plain format); Celery's own lines name their task id in ``record.data``."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = log_context()
        data = getattr(record, "data", None)
        if isinstance(data, dict) and "task_id" not in context and data.get("id"):
            context["task_id"] = data["id"]
        for field in CONTEXT_FIELDS:
            setattr(record, field, context.get(field))
        record.context = "".join(f" {f}={context[f]}" for f in CONTEXT_FIELDS if f in context)
        return True


class QuietPeriodicTasks(logging.Filter):
    """Celery's "received"/"succeeded" lines of QUIET_TASKS become DEBUG: kept only when the root logger
    logs DEBUG (LOG_LEVEL=DEBUG)."""

    def filter(self, record: logging.LogRecord) -> bool:
        data = getattr(record, "data", None)
        # levelno may be DEBUG already: the record is shared by every handler, and this filter is on each.
        if record.levelno > logging.INFO or not isinstance(data, dict) or data.get("name") not in QUIET_TASKS:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for field in CONTEXT_FIELDS:
            if getattr(record, field, None) is not None:
                line[field] = getattr(record, field)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = record.stack_info
        return json.dumps(line, default=str)
