"""Prometheus metrics: the counters and histograms every app records into, and the /metrics page.

Two kinds of figures:

* events counted where they happen (Events API batches and errors, membership changes, delivery attempts,
  partner errors, delivery latency, recompute durations): prometheus-client counters and histograms,
  defined here so that every app can record them without importing another. With several processes
  (gunicorn's workers, Celery's pool) set PROMETHEUS_MULTIPROC_DIR to one empty directory shared by the
  web, the worker and beat of a host: each process writes its figures there and /metrics adds them up
  (prometheus-client's multiprocess mode). Without it, each process counts for itself.
* the state of the database, read when Prometheus scrapes (pending changes and the age of the oldest per
  connection, connections per status): collectors registered by the apps that own the tables
  (``register_scrape_collector``, from an AppConfig.ready()), one aggregate query each.

/metrics is open unless METRICS_TOKEN is set; then it wants ``Authorization: Bearer <METRICS_TOKEN>``.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client import REGISTRY as PROCESS_REGISTRY
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

PREFIX = "af_"

EVENTS_API_BATCHES = Counter(
    f"{PREFIX}events_api_batches", "Events API batches received, by result (accepted or refused)", ["result"]
)
EVENTS_API_ERRORS = Counter(
    f"{PREFIX}events_api_errors", "Events API requests answered with an error, by status and code", ["status", "code"]
)
MEMBERSHIP_CHANGES = Counter(
    f"{PREFIX}membership_changes", "Profiles entering or leaving an audience", ["audience", "change"]
)
DELIVERY_ATTEMPTS = Counter(
    f"{PREFIX}delivery_attempts", "Partner calls made to deliver pending changes, by result", ["partner", "result"]
)
DELIVERED_CHANGES = Counter(
    f"{PREFIX}delivered_changes",
    "Changes sent to partners, by outcome (delivered, rejected, retried)",
    ["partner", "outcome"],
)
PARTNER_ERRORS = Counter(
    f"{PREFIX}partner_errors", "Failed partner calls, by partner and error class", ["partner", "error_class"]
)
DELIVERY_DURATION = Histogram(
    f"{PREFIX}delivery_attempt_duration_seconds",
    "Duration of one partner call",
    ["partner"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 90),
)
DELIVERY_LATENCY = Histogram(
    f"{PREFIX}delivery_latency_seconds",
    "From a change planned (entered the outbox) to the partner's acknowledgement",
    ["partner"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
RECOMPUTE_DURATION = Histogram(
    f"{PREFIX}recompute_duration_seconds",
    "Duration of an audience's recompute",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)

# Collectors reading the database at scrape time, registered by the apps that own the tables.
_scrape_registry = CollectorRegistry(auto_describe=False)


def register_scrape_collector(collector: Collector) -> None:
    """Add a collector run at each scrape. Idempotent per collector class (ready() may run twice in tests)."""
    registered = {type(c) for c in _scrape_registry._collector_to_names}
    if type(collector) not in registered:
        _scrape_registry.register(collector)


def exposition() -> bytes:
    """The text Prometheus reads: every process's counted figures, then the database's state."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counted = CollectorRegistry()
        MultiProcessCollector(counted)
    else:
        counted = PROCESS_REGISTRY
    return generate_latest(counted) + generate_latest(_scrape_registry)


def _authorized(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    if not token:
        return True
    given = request.headers.get("Authorization", "")
    return hmac.compare_digest(given.encode(), f"Bearer {token}".encode())


@never_cache
def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _authorized(request):
        response = JsonResponse(
            {"detail": "Authorization: Bearer <METRICS_TOKEN> is required.", "code": "not_authenticated"}, status=401
        )
        response["WWW-Authenticate"] = "Bearer"
        return response
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)


def observe_each(histogram: Histogram, values: Iterable[float]) -> None:
    for value in values:
        histogram.observe(value)
