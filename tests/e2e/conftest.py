"""End-to-end fixtures: real PostgreSQL, real Redis, a real Celery worker process, and the
local Mailchimp server. Each test session uses its own Redis queue, so a running demo's worker
never takes the tests' tasks (and the other way round)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from rest_framework.test import APIClient

from config.celery import app as celery_app
from config.queues import queue_names
from local_partners.mailchimp import LocalMailchimpServer
from tests.conftest import service_missing

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "0123456789abcdef0123456789abcdef-us6"
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def wait_until(predicate: Callable[[], object], *, timeout: float = 20.0, interval: float = 0.05) -> object:
    """Poll until predicate() is truthy; fail with its last value after timeout seconds."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value:
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s (last value: {value!r})")
        time.sleep(interval)
        value = predicate()
    return value


def _reset_broker_connections() -> None:
    """Drop pooled broker connections so the next publish uses the current broker_url."""
    if celery_app._pool is not None:
        celery_app._pool.force_close_all()
        celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def api(django_user_model) -> APIClient:
    """The REST API as an admin."""
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    client = APIClient()
    client.force_authenticate(admin)
    return client


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        service_missing(f"Redis is not reachable at {TEST_REDIS_URL}: {exc}")
    return TEST_REDIS_URL


@pytest.fixture(scope="session")
def mailchimp_server() -> Iterator[LocalMailchimpServer]:
    server = LocalMailchimpServer(api_keys=[API_KEY]).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def broker_queue(redis_url) -> str:
    """This session's queue on the test Redis; the test process publishes there from now on."""
    queue = f"e2e-{uuid.uuid4().hex[:8]}"
    celery_app.conf.update(broker_url=redis_url, task_default_queue=queue, task_always_eager=False)
    _reset_broker_connections()
    return queue


@pytest.fixture
def worker_env() -> dict[str, str]:
    """Extra environment for the worker process; a test module overrides this fixture to change it."""
    return {}


@pytest.fixture
def worker_queues(broker_queue) -> list[str]:
    """The queues the worker consumes: all of this session's (config/queues.py); a test module overrides
    this fixture to run a worker for some kinds of work only."""
    return queue_names(broker_queue)


@pytest.fixture
def worker_app() -> str:
    """The Celery app module the worker loads; a test module overrides it to add partners of its own
    (tests/fakes/bulk_worker.py)."""
    return "config"


@pytest.fixture
def worker(
    transactional_db, redis_url, broker_queue, mailchimp_server, settings, worker_env, worker_queues, worker_app
) -> Iterator[dict]:
    """A Celery worker process on the test database, and this process publishing to it."""
    from django.db import connection

    if connection.vendor != "postgresql":
        service_missing("end-to-end tests need PostgreSQL: set DATABASE_URL=postgres://...")
    queue = broker_queue
    base_urls = {"mailchimp": mailchimp_server.base_url}
    settings.PARTNER_API_BASE_URLS = base_urls
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": (
            f"postgres://{db['USER'] or 'postgres'}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        "DATABASE_CONN_MAX_AGE": "0",
        "REDIS_URL": redis_url,
        "CELERY_QUEUE": queue,
        "PARTNER_API_BASE_URLS": __import__("json").dumps(base_urls),
        "FORWARDING_BACKOFF_BASE_SECONDS": "0.2",
        "FORWARDING_BACKOFF_MAX_SECONDS": "1",
        "SECRET_KEY": settings.SECRET_KEY,
        "SECRETS_ENCRYPTION_KEYS": ",".join(settings.SECRETS_ENCRYPTION_KEYS),
        **worker_env,
    }
    env.pop("DATABASE_TEST_NAME", None)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            worker_app,
            "worker",
            "--pool=solo",
            "--loglevel=INFO",
            "-Q",
            ",".join(worker_queues),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-n",
            f"{queue}@%h",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        # The worker is ready when it answers a ping on its own queue.
        wait_until(
            lambda: celery_app.control.ping(destination=[f"{queue}@{os.uname().nodename}"], timeout=0.5), timeout=30
        )
        yield {"queue": queue, "process": process, "env": env}
    finally:
        process.terminate()
        try:
            output, _ = process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate()
        mailchimp_server.reset()
        # pytest shows a test's captured output only when it fails: then the worker's log is there.
        print(f"--- celery worker log ({queue}) ---\n{output[-20000:]}")
