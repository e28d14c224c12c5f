"""Fixtures and the closing table of the fault suite (``make faults``; see tests/faults/harness.py).

Each scenario gets a ``Stack``: a private redis-server, the fault-injecting Mailchimp, its own
processes, and the test database (flushed after it). A watchdog bounds every scenario in time
(``@pytest.mark.time_limit(seconds)``, default 300 s), so a hang fails instead of eating CI.
At the end, one table: scenario, expected, got, duplicates, time to converge, result.
"""

from __future__ import annotations

import shutil
import signal
from collections.abc import Iterator

import pytest

from config.celery import app as celery_app
from tests.conftest import service_missing
from tests.faults.harness import Row, Stack

DEFAULT_TIME_LIMIT = 300
ROWS = pytest.StashKey[list]()


class ScenarioOvertime(Exception):
    """The scenario outran its time limit: the harness must bound its waits (a real failure)."""


@pytest.fixture
def faults(request, transactional_db, settings, tmp_path) -> Iterator[Stack]:
    from django.db import connection

    if connection.vendor != "postgresql":
        service_missing("the fault suite needs PostgreSQL: set DATABASE_URL=postgres://...")
    if shutil.which("redis-server") is None:
        service_missing("the fault suite needs the redis-server program (a private broker it can kill)")
    doc = (request.node.function.__doc__ or request.node.name).strip().splitlines()[0]
    row = Row(scenario=doc.rstrip("."))
    request.node.stash[ROWS] = row
    request.config.stash.setdefault(ROWS, []).append((request.node.nodeid, row))
    stack = Stack(workdir=tmp_path, row=row, celery_app=celery_app, settings=settings)
    limit = request.node.get_closest_marker("time_limit")
    seconds = limit.args[0] if limit else DEFAULT_TIME_LIMIT

    def overtime(signum, frame):
        raise ScenarioOvertime(f"scenario exceeded its time limit of {seconds}s")

    previous = signal.signal(signal.SIGALRM, overtime)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        stack.start_broker()
        yield stack
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        stack.stop()
        # Shown by pytest when the scenario failed.
        print(f"--- process logs ({tmp_path}) ---\n{stack.logs_tail()}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    row = item.stash.get(ROWS, None)
    if row is not None and report.when == "call":
        if hasattr(report, "wasxfail"):
            defect = report.wasxfail.split(":")[0].replace("reason: ", "")
            row.result = f"FAIL, expected ({defect})" if report.skipped else f"PASS, unexpected ({defect})"
        else:
            row.result = {"passed": "PASS", "failed": "FAIL"}.get(report.outcome, report.outcome)
    elif row is not None and report.when == "setup" and report.failed:
        row.result = "ERROR"
    return report


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    rows = config.stash.get(ROWS, [])
    if not rows:
        return
    header = ("scenario", "expected", "got", "duplicates", "time to converge", "result")
    table = [header] + [
        (r.scenario, r.expected, r.got, r.duplicates, r.converge, getattr(r, "result", "?")) for _, r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    terminalreporter.section("fault suite")
    for n, line in enumerate(table):
        terminalreporter.write_line(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
        if n == 0:
            terminalreporter.write_line("-+-".join("-" * width for width in widths))
    for _, r in rows:
        for problem in r.problems:
            terminalreporter.write_line(f"  {r.scenario}: {problem}")
