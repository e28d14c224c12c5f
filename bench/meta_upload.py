"""A bulk upload to Meta: N members' hashed emails from the outbox to the local Meta server.

Measures, in one run against the local Meta Graph API server (local_partners/meta.py):
  hashing - normalising and hashing the N emails alone (SHA-256, as Meta wants them);
  floor   - the bare work of an upload: the same emails normalised, hashed and sent as 10,000-row
            POST /<audience>/users requests with their session, from one keep-alive requests.Session
            (no database at all);
  service - connect an audience of N members to a Meta output (the Custom Audience is created, the
            outbox backfilled) and run one upload (forwarding.bulk.upload_connection: claim, write-ahead,
            hash, send, record every outcome) until the outbox is empty.
and prints them and the ratio. Issue 11's target: 750,000 members in at most 60 s.

    .venv/bin/python bench/meta_upload.py --members 750000
    BENCH_DATABASE_URL=postgres://postgres@127.0.0.1:5432/af_meta .venv/bin/python bench/meta_upload.py --members 100000
"""

from __future__ import annotations

import argparse
import time

import common

TOKEN = "bench-meta-token"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=750_000)
    args = parser.parse_args()
    n = args.members
    common.use_database("af_bench_meta", fresh=True)

    import requests
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    import forwarding.doorbell
    from audiences.models import Audience
    from forwarding.bulk import upload_connection
    from forwarding.lifecycle import connection_create
    from local_partners.meta import LocalMetaServer
    from outputs.partners.meta import ROWS_PER_REQUEST, hashed_row
    from outputs.services import output_create

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:  # a rerun on a kept database starts from nothing
        cursor.execute("TRUNCATE audiences_profile, audiences_audience CASCADE")
    server = LocalMetaServer(access_tokens=[TOKEN]).start()
    settings.PARTNER_API_BASE_URLS = {"meta": server.base_url}
    forwarding.doorbell.send_safely = lambda *a, **k: None  # this bench uploads in-process
    emails = [f"User{i}@Example.com " for i in range(n)]

    # Hashing alone: Meta's normalisation (trim, lower case) and SHA-256 hex.
    started = time.perf_counter()
    rows = [hashed_row("email", e) for e in emails]
    hashing = time.perf_counter() - started

    # Floor: normalise, hash and send the same rows, 10,000 a request, with a session, and nothing else.
    floor_audience = server.create_audience("floor")
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {TOKEN}"
    started = time.perf_counter()
    requests_ = (n + ROWS_PER_REQUEST - 1) // ROWS_PER_REQUEST
    for seq, start in enumerate(range(0, n, ROWS_PER_REQUEST), 1):
        data = [hashed_row("email", e) for e in emails[start : start + ROWS_PER_REQUEST]]
        body = {
            "session": {
                "session_id": 1,
                "batch_seq": seq,
                "last_batch_flag": seq == requests_,
                "estimated_num_total": n,
            },
            "payload": {"schema": "EMAIL_SHA256", "data": data},
        }
        session.post(f"{server.base_url}/{floor_audience}/users", json=body).raise_for_status()
    floor = time.perf_counter() - started
    assert len(server.members(floor_audience)) == n
    del rows

    # The service: N members with an email, inserted set-wise, connected and uploaded.
    audience = Audience.objects.create(name="Bench", status="active", criteria={"and": []})
    common.insert_email_members(audience.pk, n)
    output = output_create(name="Bench", partner_key="meta", settings={"access_token": TOKEN, "ad_account_id": "1"})
    started = time.perf_counter()
    conn = connection_create(audience=audience, output=output, settings={})
    backfill = time.perf_counter() - started
    started = time.perf_counter()
    report = upload_connection(connection_id=conn.pk)
    service = time.perf_counter() - started
    held = len(server.members(conn.settings["audience_id"]))
    sessions = {u["session"]["session_id"] for u in server.uploads if u["audience_id"] == conn.settings["audience_id"]}
    server.stop()
    assert report.delivered == n and held == n, (report, held)

    print(f"members                        {n}")
    print(f"hashing alone (normalise+sha)  {hashing:8.2f} s   {n / hashing:10.0f} identities/s")
    print(f"floor (hash + bare HTTP)       {floor:8.2f} s   {n / floor:10.0f} identities/s")
    print(f"backfill (connect)             {backfill:8.2f} s   {n / backfill:10.0f} identities/s")
    print(f"upload (service)               {service:8.2f} s   {n / service:10.0f} identities/s")
    print(f"requests / sessions            {report.batches} / {len(sessions)}")
    print(f"ratio upload / floor           {service / floor:8.2f}x")
    print(f"projected at 750,000           {service / n * 750_000:8.1f} s (target <= 60 s)")


if __name__ == "__main__":
    main()
