"""Logs an operator can use (config/logs.py): context on every line, JSON when configured, quiet sweeps."""

from __future__ import annotations

import io
import json
import logging

import pytest
import responses
from django.http import HttpResponse
from django.test import RequestFactory

from config.log_redaction import RedactPersonalData
from config.logs import (
    AddLogContext,
    JsonFormatter,
    QuietPeriodicTasks,
    RequestIdMiddleware,
    bind_log_context,
    clear_log_context,
)
from forwarding import tasks
from tests import factories


@pytest.fixture
def json_lines():
    """The root logger's lines as LOGGING formats them with LOG_FORMAT=json (the same filters)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    for log_filter in (QuietPeriodicTasks(), RedactPersonalData(), AddLogContext()):
        handler.addFilter(log_filter)
    root = logging.getLogger()
    root.addHandler(handler)
    clear_log_context()
    yield lambda: [json.loads(line) for line in stream.getvalue().splitlines()]
    root.removeHandler(handler)
    clear_log_context()


def test_a_json_line_carries_the_context_and_no_detail_of_a_row(json_lines):
    bind_log_context(task_id="t-1", connection_id=7, partner="mailchimp")
    logging.getLogger("forwarding.delivery").warning("failed: DETAIL:  Key (type, value)=(email, a@b.com) exists")
    [line] = json_lines()
    assert line["level"] == "WARNING" and line["logger"] == "forwarding.delivery"
    assert line["message"] == "failed: DETAIL:  [redacted]"
    assert (line["task_id"], line["connection_id"], line["partner"]) == ("t-1", 7, "mailchimp")


def test_a_request_has_an_id_on_its_lines_and_in_its_answer(json_lines):
    def view(request):
        logging.getLogger("audiences").warning("in the request")
        return HttpResponse("ok")

    middleware = RequestIdMiddleware(view)
    given = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="abc-123"))
    made = middleware(RequestFactory().get("/", HTTP_X_REQUEST_ID="not valid <script>"))
    lines = json_lines()
    assert given["X-Request-ID"] == "abc-123" and lines[0]["request_id"] == "abc-123"
    assert len(made["X-Request-ID"]) == 32 and lines[1]["request_id"] == made["X-Request-ID"]


@pytest.mark.django_db
@responses.activate
def test_every_delivery_line_names_its_task_connection_and_partner(json_lines, rings, settings):
    settings.CELERY_TASK_ALWAYS_EAGER = True
    connection = factories.connect(factories.active_audience(), factories.mailchimp_output())
    factories.parisian("person@example.com")
    responses.post("https://us6.api.mailchimp.com/3.0/lists/list1", status=401, json={"title": "API Key Invalid"})
    logging.getLogger().setLevel(logging.INFO)

    result = tasks.deliver_connection.apply(args=[connection.pk], task_id="task-42")

    assert result.successful()
    lines = [line for line in json_lines() if line["logger"].startswith(("forwarding", "celery"))]
    assert any("faulted" in line["message"] for line in lines)
    for line in lines:
        assert (line.get("task_id"), line.get("connection_id"), line.get("partner")) == (
            "task-42",
            connection.pk,
            "mailchimp",
        ), line
        assert "person@example.com" not in json.dumps(line)


@pytest.mark.parametrize("root_level, kept", [(logging.INFO, False), (logging.DEBUG, True)])
def test_celerys_lines_of_the_sweep_are_debug(json_lines, root_level, kept):
    root = logging.getLogger()
    was = root.level
    root.setLevel(root_level)
    try:
        celery_line = {"name": "forwarding.tasks.sweep_pending_work", "id": "s-1"}
        logging.getLogger("celery.app.trace").info(
            "Task %(name)s[%(id)s] succeeded", celery_line, extra={"data": celery_line}
        )
        other = {"name": "forwarding.tasks.deliver_connection", "id": "d-1"}
        logging.getLogger("celery.app.trace").info("Task %(name)s[%(id)s] succeeded", other, extra={"data": other})
    finally:
        root.setLevel(was)
    lines = json_lines()
    assert [line["task_id"] for line in lines] == (["s-1", "d-1"] if kept else ["d-1"])
    assert lines[0]["level"] == ("DEBUG" if kept else "INFO")
