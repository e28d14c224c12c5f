"""/readyz (config/health.py) with a real Celery worker and a real beat: it goes unready when either stops."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.e2e.conftest import ROOT, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
HEARTBEAT = {"HEARTBEAT_INTERVAL": "0.5", "HEARTBEAT_MAX_AGE": "3"}


@pytest.fixture
def worker_env() -> dict[str, str]:
    return HEARTBEAT


def readiness(client) -> tuple[int, dict]:
    response = client.get("/readyz")
    return response.status_code, response.json()["checks"]


def test_readyz_goes_unhealthy_when_the_worker_or_beat_stops(client, settings, worker, tmp_path):
    settings.HEARTBEAT_MAX_AGE = 3
    beat = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO", f"--schedule={tmp_path / 'beat'}"],
        cwd=ROOT,
        env=worker["env"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: readiness(client)[0] == 200, timeout=30)

        beat.terminate()
        beat.wait(timeout=15)
        status, checks = wait_until(lambda: (s := readiness(client))[0] == 503 and s, timeout=10)
        assert checks["beat"]["ok"] is False and checks["beat"]["age_seconds"] > 3
        assert checks["worker"]["ok"] is True

        worker["process"].terminate()  # a warm shutdown removes the worker's heartbeat
        worker["process"].wait(timeout=15)
        status, checks = readiness(client)
        assert status == 503
        assert checks["worker"] == {"ok": False, "error": "no heartbeat"}
    finally:
        if beat.poll() is None:
            beat.kill()
            beat.wait()


def test_readyz_goes_unhealthy_when_the_worker_is_killed(client, settings, worker):
    settings.HEARTBEAT_MAX_AGE = 3
    wait_until(lambda: readiness(client)[1]["worker"]["ok"], timeout=10)

    worker["process"].kill()  # no clean stop: the heartbeat just grows old
    worker["process"].wait()

    checks = wait_until(lambda: (s := readiness(client))[1]["worker"]["ok"] is False and s[1], timeout=10)
    assert checks["worker"]["age_seconds"] > 3
