"""Backfill: connect an audience of N members to a new Mailchimp connection, until the partner acknowledged
the last identity.

    .venv/bin/python bench/backfill.py --profiles 1000000

The population is bench/generate.py's (an email for about half the profiles, no events); every profile is
a member of the audience. The clock runs from connection_create() (the set-wise backfill of the outbox)
to the return of deliver_connection() (every batch answered by the local Mailchimp server, running in a
process of its own, and recorded), in this process, which is the delivering one: its resident memory is
sampled every 0.2 s meanwhile, to show it flat whatever N. Database: `af_bench_backfill` on 127.0.0.1
(created anew), or BENCH_DATABASE_URL.
"""

from __future__ import annotations

import argparse
import os
import threading
import time

from common import list_member_count, local_mailchimp, peak_rss_mb, use_database
from generate import generate

KEY = "0123456789abcdef0123456789abcdef-us6"


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """The process's resident memory, every `interval` seconds, until stopped."""

    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.samples: list[tuple[float, float]] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.perf_counter()
        while not self.stopped.wait(self.interval):
            self.samples.append((time.perf_counter() - started, rss_mb()))


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", type=int, default=1_000_000)
    args = parser.parse_args()
    use_database("af_bench_backfill", fresh=not os.environ.get("BENCH_DATABASE_URL"))

    from django.conf import settings
    from django.db import connection

    import forwarding.doorbell
    from audiences.models import Audience
    from forwarding.delivery import deliver_connection
    from forwarding.lifecycle import connection_create
    from outputs.services import output_create

    forwarding.doorbell.send_safely = lambda *a, **k: None  # this bench delivers in-process

    started = time.perf_counter()
    generate(args.profiles, events_per_profile=0)
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE audiences_audience, outputs_output CASCADE")  # a previous run's
    audience = Audience.objects.create(name="Everybody", status="active", criteria={"and": []})
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO audiences_audiencemembership (audience_id, profile_id, entered_at) "
            "SELECT %s, id, now() FROM audiences_profile",
            [audience.pk],
        )
        cursor.execute("SELECT count(*) FROM audiences_identity WHERE type = 'email'")
        emails = cursor.fetchone()[0]
        cursor.execute("ANALYZE")
    print(f"population              {time.perf_counter() - started:8.1f} s to generate")

    with local_mailchimp(KEY, ["backfill"]) as base_url:
        settings.PARTNER_API_BASE_URLS = {"mailchimp": base_url}
        output = output_create(
            name="Backfill", partner_key="mailchimp", settings={"api_key": KEY, "double_opt_in": False}
        )
        before = rss_mb()
        print(f"members                 {args.profiles}, of which {emails} with an email   (load: {load()})")
        sampler = Sampler()
        sampler.start()
        started = time.perf_counter()
        new = connection_create(audience=audience, output=output, settings={"list_id": "backfill"})
        connected = time.perf_counter() - started
        report = deliver_connection(connection_id=new.pk)
        total = time.perf_counter() - started
        sampler.stopped.set()
        sampler.join()
        assert report.delivered == emails, report
        assert list_member_count(base_url, KEY, "backfill") == emails

    print(f"connect (backfill)      {connected:8.1f} s")
    print(f"connect -> last ack     {total:8.1f} s   {emails / total:10.0f} identities/s   (load: {load()})")
    rss = [mb for _, mb in sampler.samples] or [before]
    quarters = [rss[min(len(rss) - 1, len(rss) * q // 4)] for q in (1, 2, 3, 4)]
    print(f"RSS before connect      {before:8.1f} MiB")
    print("RSS at 1/4 .. 4/4       " + "  ".join(f"{mb:6.1f}" for mb in quarters) + " MiB")
    print(f"peak RSS (sampled)      {max(rss):8.1f} MiB   (ru_maxrss of the process: {peak_rss_mb():.1f} MiB)")


if __name__ == "__main__":
    main()
