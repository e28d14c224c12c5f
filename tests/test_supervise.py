"""scripts/supervise.py: restarts a command that exits, with backoff and a log line per restart,
and passes stop signals on. Real processes; the backoff is injected (tenths of a second)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

SUPERVISE = Path(__file__).resolve().parents[1] / "scripts" / "supervise.py"


def wait_until(predicate, *, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        time.sleep(0.02)
    return value


@pytest.fixture
def supervise(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen]]:
    """Start the supervisor running `python -c child` (its log in tmp_path/supervise.log), in a
    session of its own, so that whatever a test leaves running is killed at the end."""
    started: list[subprocess.Popen] = []

    def start(child: str, *options: str) -> subprocess.Popen:
        with open(tmp_path / "supervise.log", "w") as log:
            process = subprocess.Popen(
                [sys.executable, str(SUPERVISE), "--name", "child", *options, "--", sys.executable, "-c", child],
                cwd=tmp_path,
                stderr=log,
                start_new_session=True,
            )
        started.append(process)
        return process

    yield start
    for process in started:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def test_a_command_that_exits_is_restarted_with_growing_backoff_and_a_line_per_restart(tmp_path, supervise):
    runs = tmp_path / "runs"
    child = f"open({str(runs)!r}, 'a').write('run\\n'); raise SystemExit(3)"
    supervisor = supervise(child, "--backoff", "0.1", "--max-backoff", "0.4")
    try:
        wait_until(lambda: runs.exists() and runs.read_text().count("run") >= 5)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=10)  # its status depends on whether the child was running then
    log = (tmp_path / "supervise.log").read_text().splitlines()
    assert all("supervise[child]: " in line for line in log)  # one line per restart, named
    assert "exited with code 3" in log[0] and "restart #1 in 0.1s" in log[0]
    assert "restart #2 in 0.2s" in log[1]
    assert "restart #3 in 0.4s" in log[2]
    assert "restart #4 in 0.4s" in log[3]  # capped by --max-backoff


def test_a_killed_command_is_restarted_and_the_signal_is_named(tmp_path, supervise):
    runs = tmp_path / "runs"
    child = f"import os, signal; open({str(runs)!r}, 'a').write('run\\n'); os.kill(os.getpid(), signal.SIGKILL)"
    supervisor = supervise(child, "--backoff", "0.1")
    try:
        wait_until(lambda: runs.exists() and runs.read_text().count("run") >= 2)
    finally:
        supervisor.send_signal(signal.SIGTERM)
        supervisor.wait(timeout=10)
    assert "killed by SIGKILL" in (tmp_path / "supervise.log").read_text()


def test_sigterm_is_passed_on_and_the_supervisor_leaves_with_the_command_status(tmp_path, supervise):
    ready = tmp_path / "ready"
    got = tmp_path / "got"
    child = (
        "import signal, sys, time, pathlib\n"
        f"def leave(signum, frame): pathlib.Path({str(got)!r}).write_text(signal.Signals(signum).name); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, leave)\n"
        f"pathlib.Path({str(ready)!r}).write_text('ready')\n"
        "while True: time.sleep(0.05)\n"
    )
    supervisor = supervise(child, "--backoff", "0.1")
    wait_until(ready.exists)
    supervisor.send_signal(signal.SIGTERM)
    assert supervisor.wait(timeout=10) == 0  # the command's own status: a warm shutdown went well
    assert got.read_text() == "SIGTERM"
    assert "restart" not in (tmp_path / "supervise.log").read_text()  # stopping is not a crash
