"""The run command supervises the worker (issue 6, defect 3): a worker killed under
scripts/supervise.py, as the Procfile runs it, is started again and delivers."""

from __future__ import annotations

import os
import signal
import time

import pytest

from tests.faults.harness import Stack, wait_for

pytestmark = [pytest.mark.faults, pytest.mark.django_db(transaction=True)]


@pytest.mark.time_limit(180)
def test_a_worker_killed_under_the_supervisor_is_restarted_and_delivers(faults: Stack):
    """worker kill -9 under the supervisor (Procfile)"""
    faults.prepare(members=2_000)
    supervisor = faults.start_worker(supervised=True)
    faults.start_beat()
    (worker_pid,) = supervisor.children()
    os.kill(worker_pid, signal.SIGKILL)  # the worker's main process, as the OOM killer would
    killed = time.monotonic()
    wait_for(lambda: "killed by SIGKILL" in supervisor.log(), timeout=10, what="the supervisor noticing")
    wait_for(lambda: supervisor.log().count(" ready.") >= 2, timeout=60, what="the worker started again")
    assert supervisor.alive() and supervisor.children() != [worker_pid]
    faults.connect()
    with faults.churn(ops=100, seconds=10):
        pass
    faults.converge(since=killed, limit=60, after="the kill")
    faults.verdict()
