"""Queueing tasks by name (config/queueing.py)."""

from __future__ import annotations

import logging
import socket

import pytest
from celery import Celery

from audiences.membership.recompute import RECOMPUTE_TASK
from config import queueing
from config.celery import app
from forwarding.doorbell import DELIVER_TASK, END_TASK


@pytest.mark.parametrize("name", [DELIVER_TASK, END_TASK, RECOMPUTE_TASK])
def test_every_task_queued_by_name_is_registered_in_this_process(name):
    # The web process never runs a worker's autodiscovery: each app's ready() imports its tasks.
    assert name in app.tasks


def test_an_unknown_task_name_is_a_bug_not_an_outage():
    with pytest.raises(KeyError):
        queueing.send_safely("forwarding.tasks.no_such_task", 1)


def test_an_unreachable_broker_is_logged_not_raised(caplog, monkeypatch):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A Celery app of its own pointed at it (the shared tasks register with every app).
    # Celery's CELERY_BROKER_URL environment variable would win over the broker given here.
    monkeypatch.delenv("CELERY_BROKER_URL", raising=False)
    unreachable = Celery("unreachable", broker=f"redis://127.0.0.1:{port}/0", set_as_current=False)
    unreachable.conf.task_publish_retry_policy = {"max_retries": 0}
    monkeypatch.setattr(queueing, "app", unreachable)

    with caplog.at_level(logging.WARNING, logger="config.queueing"):
        queueing.send_safely(DELIVER_TASK, 42)

    assert "could not queue forwarding.tasks.deliver_connection(42,); the sweeper will" in caplog.text
