"""What the Events API limits cost: per request to /v2/events, limits on vs off, in the same run.

    .venv/bin/python bench/ratelimit.py --requests 2000

Sends one-batch requests through Django's full request handling (test client, in process, real
PostgreSQL and Redis), alternating request by request with the limits on (default settings: the per-input bucket,
the failed-authentication check and the known-client mark, two Redis round trips) and off (every limit
at 0: no Redis call), and prints the median time per request of each and the difference. Also times
the two limit calls alone. Uses a scratch database `af_bench_limits` unless BENCH_DATABASE_URL is set.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import uuid

from common import use_database

OFF = {
    "EVENTS_API_RATE_LIMIT": 0,
    "EVENTS_API_AUTH_FAILURES_PER_CLIENT": 0,
    "EVENTS_API_AUTH_FAILURES_PER_KEY": 0,
}
ON = {"EVENTS_API_RATE_LIMIT": 1_000_000, "EVENTS_API_RATE_BURST": 10_000_000}  # on, never refusing


def main() -> None:
    parser = argparse.ArgumentParser(description="Events API limits overhead")
    parser.add_argument("--requests", type=int, default=2000, help="per mode")
    args = parser.parse_args()
    use_database("af_bench_limits", fresh=True)

    from django.core.management import call_command
    from django.test import Client, RequestFactory, override_settings

    from audiences.inputs import input_create
    from config import ratelimit

    call_command("migrate", verbosity=0)
    source, secret = input_create("bench")
    auth = "Basic " + base64.b64encode(f"{source.key}:{secret}".encode()).decode()
    client = Client(HTTP_HOST="localhost")
    prefix = f"bench-limits:{uuid.uuid4().hex}:"

    def send(count: int) -> list[float]:
        timings = []
        for _ in range(count):
            body = json.dumps(
                {
                    "environment": "production",
                    "source_request_id": uuid.uuid4().hex,
                    "user_identities": {"customer_id": uuid.uuid4().hex[:12]},
                    "events": [
                        {"event_type": "custom_event", "data": {"event_name": "Play", "custom_event_type": "media"}}
                    ],
                }
            )
            started = time.perf_counter()
            response = client.post("/v2/events", body, content_type="application/json", HTTP_AUTHORIZATION=auth)
            timings.append(time.perf_counter() - started)
            assert response.status_code == 202, response.content
        return timings

    with override_settings(RATE_LIMIT_KEY_PREFIX=prefix):
        send(100)  # warm
        measured: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.requests):  # alternating request by request, so drift touches both alike
            for mode, overrides in (("off", OFF), ("on", ON)):
                with override_settings(**overrides):
                    measured[mode] += send(1)
        request = RequestFactory().post("/v2/events", REMOTE_ADDR="127.0.0.1")
        with override_settings(**ON):
            calls = []
            for _ in range(args.requests):
                started = time.perf_counter()
                ratelimit.authentication_refused(request, (source.key, secret))
                ratelimit.batches_refused(request, source, 1)
                calls.append(time.perf_counter() - started)

    off, on = statistics.median(measured["off"]), statistics.median(measured["on"])
    print(
        json.dumps(
            {
                "requests_per_mode": len(measured["on"]),
                "median_ms_limits_off": round(off * 1000, 3),
                "median_ms_limits_on": round(on * 1000, 3),
                "overhead_ms_per_request": round((on - off) * 1000, 3),
                "ratio_on_over_off": round(on / off, 3),
                "limit_calls_alone_median_ms": round(statistics.median(calls) * 1000, 3),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
