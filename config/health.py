"""Health: /healthz (the process answers) and /readyz (what it depends on answers, and beat and a worker live).

Beat and the workers leave heartbeats in Redis (the broker), under keys named by the deployment's queue
prefix (CELERY_QUEUE), so deployments sharing one Redis database do not read each other's:

* beat: a periodic task, ``config.health.heartbeat``, every HEARTBEAT_INTERVAL seconds; beat writes the time
  when it publishes it (``before_task_publish`` in the beat process), so the beat heartbeat says that beat
  runs, whether or not a worker does. The task itself does nothing when a worker runs it.
* workers: a worker bootstep (``WorkerHeartbeat``, added in config/celery.py) writes the worker's name and
  the time on start and then every HEARTBEAT_INTERVAL seconds from the worker's timer, and removes it on a
  clean stop. A killed worker's heartbeat simply grows old.

/readyz answers 200 when the database and the broker answer and both heartbeats are younger than
HEARTBEAT_MAX_AGE seconds, else 503; each check is reported in the JSON body either way.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import redis
from celery import bootsteps, current_app, shared_task
from celery.signals import before_task_publish
from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache

from config.metrics import metrics_view

logger = logging.getLogger(__name__)

HEARTBEAT_TASK = "config.health.heartbeat"
KEY_PREFIX = "af:heartbeat:"
_clients: dict[str, redis.Redis] = {}


def _redis() -> redis.Redis:
    """The broker's Redis, with short timeouts: a health check must answer even when Redis does not."""
    url = current_app.conf.broker_url
    if url not in _clients:
        _clients[url] = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    return _clients[url]


def _key(what: str) -> str:
    return f"{KEY_PREFIX}{current_app.conf.task_default_queue}:{what}"


# --- heartbeats ------------------------------------------------------------------------------


@shared_task(name=HEARTBEAT_TASK, ignore_result=True)
def heartbeat() -> None:
    """Published by beat (which records its heartbeat as it does, below); nothing to do on the worker."""


@before_task_publish.connect(sender=HEARTBEAT_TASK)
def _beat_heartbeat(**_: Any) -> None:
    try:
        _redis().set(_key("beat"), time.time())
    except redis.RedisError:
        logger.warning("could not record beat's heartbeat", exc_info=True)


def record_worker_heartbeat(worker_name: str) -> None:
    try:
        _redis().hset(_key("workers"), worker_name, time.time())
    except redis.RedisError:
        logger.warning("could not record the heartbeat of worker %s", worker_name, exc_info=True)


class WorkerHeartbeat(bootsteps.StartStopStep):
    """Writes the worker's heartbeat from its timer (in the main process, whatever the pool)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **kwargs: Any) -> None:
        super().__init__(worker, **kwargs)
        self.timer_entry = None

    def start(self, worker: Any) -> None:
        record_worker_heartbeat(worker.hostname)
        self.timer_entry = worker.timer.call_repeatedly(
            settings.HEARTBEAT_INTERVAL, record_worker_heartbeat, (worker.hostname,)
        )

    def stop(self, worker: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
        try:
            _redis().hdel(_key("workers"), worker.hostname)
        except redis.RedisError:
            pass


# --- checks ----------------------------------------------------------------------------------


def _check_database() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return {"ok": True}
    except Exception as exc:  # any failure of the database is "not ready", named
        return {"ok": False, "error": exc.__class__.__name__}


def _check_heartbeats() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """The broker, and beat's and the workers' heartbeats (all three read from Redis)."""
    now = time.time()
    max_age = settings.HEARTBEAT_MAX_AGE
    try:
        client = _redis()
        client.ping()
        beat_at = client.get(_key("beat"))
        workers = client.hgetall(_key("workers"))
    except redis.RedisError as exc:
        down = {"ok": False, "error": exc.__class__.__name__}
        return down, {"ok": False, "error": "broker unreachable"}, {"ok": False, "error": "broker unreachable"}
    if beat_at is None:
        beat = {"ok": False, "error": "no heartbeat"}
    else:
        age = round(now - float(beat_at), 1)
        beat = {"ok": age <= max_age, "age_seconds": age}
    ages = sorted(round(now - float(at), 1) for at in workers.values())
    live = [age for age in ages if age <= max_age]
    if not ages:
        worker = {"ok": False, "error": "no heartbeat"}
    else:
        worker = {"ok": bool(live), "age_seconds": ages[0], "live": len(live)}
    return {"ok": True}, beat, worker


def readiness() -> dict[str, Any]:
    broker, beat, worker = _check_heartbeats()
    checks = {"database": _check_database(), "broker": broker, "beat": beat, "worker": worker}
    return {
        "ready": all(check["ok"] for check in checks.values()),
        "max_age_seconds": settings.HEARTBEAT_MAX_AGE,
        "checks": checks,
    }


# --- views -----------------------------------------------------------------------------------


class HealthMiddleware:
    """Answers /healthz, /readyz and /metrics (config/metrics.py) before any other middleware: a probe or
    Prometheus addresses the process by its IP (not in ALLOWED_HOSTS) over plain HTTP (no SSL redirect),
    and needs no session or CSRF."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        if request.path == "/healthz":
            return healthz(request)
        if request.path == "/readyz":
            return readyz(request)
        if request.path == "/metrics":
            return metrics_view(request)
        return self.get_response(request)


@never_cache
def healthz(request: HttpRequest) -> JsonResponse:
    """The process is up and serving: nothing else is asked (a liveness probe restarts on failure)."""
    return JsonResponse({"status": "ok"})


@never_cache
def readyz(request: HttpRequest) -> JsonResponse:
    report = readiness()
    response = JsonResponse(report, status=200 if report["ready"] else 503)
    # A probe asks every few seconds: an unready answer is the probe's to report, not an ERROR log line each time.
    response._has_been_logged = True
    return response
