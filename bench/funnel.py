"""The identity funnel (forwarding/funnel.py) of one connection over a large audience, beside the bare SQL floor.

    .venv/bin/python bench/funnel.py --members 1000000

Makes its own database (af_bench_funnel): N profiles, all members of one audience connected to a Mailchimp output.
The profiles are generate.py's (a customer id; 50% an email; 80% a Google advertising id; no events); 5% get a
second email and 1% an email Mailchimp refuses (an underscore in the domain). The connection's state, set-wise:
80% of the emails added at the partner, 4% refused (three reasons, two quoting the address), 1% maybe held, 10%
waiting in the outbox, 4% retrying, the rest not queued. Then, best of --runs after a warm-up: identity_funnel()
without the partner's count (no network), beside its floor: one bare pass over the same join (members, their
identities of the accepted type, the connection's members and outbox) that only counts rows; and the ratio.
"""

from __future__ import annotations

import argparse
import time

from common import best, use_database, warm
from generate import generate


def make_population(members: int) -> int:
    """The profiles, the audience, the connection and its state; returns the connection's id."""
    from django.db import connection as db
    from django.utils import timezone

    from audiences.models import Audience
    from connections.models import Connection
    from outputs.services import output_create

    # generate.py's profiles: a customer id each, an email for 50%, a Google advertising id for 80% (no events).
    generate(members, events_per_profile=0)
    now = timezone.now()
    h = "((hashtext(g::text || 'e') & 2147483647) %% 1000)"  # generate.py's draw of who has an email
    with db.cursor() as cursor:
        # A second email for 5% of the profiles, and for 1% an address Mailchimp refuses.
        cursor.execute(
            f"""
            INSERT INTO audiences_identity (profile_id, type, value, created_at)
            SELECT g, 'email', CASE WHEN {h} < 50 THEN 'second' || g || '@example.com'
                                    ELSE 'odd' || g || '@under_score.com' END, now()
            FROM generate_series(1, %s) g WHERE {h} < 50 OR {h} BETWEEN 500 AND 509
            """,
            [members],
        )
        audience = Audience.objects.create(name="Bench", status="active", criteria={"and": []})
        cursor.execute(
            "INSERT INTO audiences_audiencemembership (audience_id, profile_id, entered_at) "
            "SELECT %s, g, now() FROM generate_series(1, %s) g",
            [audience.pk, members],
        )
        output = output_create(name="Mailchimp", partner_key="mailchimp", settings={"api_key": "0123456789abcdef-us6"})
        connection = Connection.objects.create(audience=audience, output=output, settings={"list_id": "bench"})
        # Each email's fate from a hash of its value: d in [0, 1000).
        d = "((hashtext(i.value || 'fate') & 2147483647) %% 1000)"
        cursor.execute(
            f"""
            INSERT INTO connections_connectionmember (connection_id, identity_type, value, state, reason, updated_at)
            SELECT %s, i.type, i.value,
                   CASE WHEN {d} < 800 THEN 'added' WHEN {d} < 840 THEN 'rejected' ELSE 'maybe_held' END,
                   CASE WHEN {d} < 800 OR {d} >= 840 THEN ''
                        WHEN {d} < 820 THEN i.value || ' looks fake or invalid, please enter a real email address.'
                        WHEN {d} < 835 THEN i.value || ' is in a compliance state due to unsubscribe, bounce, or '
                                                        'compliance review and cannot be subscribed.'
                        ELSE 'Your merge fields were invalid.' END,
                   %s
            FROM audiences_identity i WHERE i.type = 'email' AND {d} < 850
            """,
            [connection.pk, now],
        )
        cursor.execute(
            f"""
            INSERT INTO forwarding_pendingchange (connection_id, identity_type, value, action, profile_id, version,
                                                  attempts, next_attempt_at, last_error, created_at)
            SELECT %s, i.type, i.value, 'add', i.profile_id, 1, CASE WHEN {d} < 970 THEN 0 ELSE 3 END, %s, '', %s
            FROM audiences_identity i WHERE i.type = 'email' AND {d} >= 850 AND {d} < 990
            """,
            [connection.pk, now, now],
        )
        cursor.execute("ANALYZE")
    return connection.pk


FLOOR_SQL = """
SELECT COUNT(*), COUNT(cm.id), COUNT(pc.id)
FROM audiences_audiencemembership m
JOIN audiences_identity i ON i.profile_id = m.profile_id AND i.type IN ('email')
LEFT JOIN connections_connectionmember cm
       ON cm.connection_id = %s AND cm.identity_type = i.type AND cm.value = i.value
LEFT JOIN forwarding_pendingchange pc ON pc.connection_id = %s AND pc.identity_type = i.type AND pc.value = i.value
WHERE m.audience_id = %s
"""


def main() -> None:
    parser = argparse.ArgumentParser(description="The identity funnel at scale, beside its floor")
    parser.add_argument("--members", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="time the population a previous run made")
    args = parser.parse_args()
    use_database("af_bench_funnel", fresh=not args.reuse)

    from django.db import connection as db

    from connections.models import Connection
    from forwarding.funnel import identity_funnel

    started = time.perf_counter()
    if args.reuse:
        connection_id = Connection.objects.get().pk
    else:
        connection_id = make_population(args.members)
        print(f"population of {args.members:,} members made in {time.perf_counter() - started:.1f} s")
    warm(
        [
            "audiences_audiencemembership",
            "audiences_identity",
            "connections_connectionmember",
            "forwarding_pendingchange",
        ]
    )
    connection = Connection.objects.select_related("audience", "output").get(pk=connection_id)

    def floor() -> None:
        with db.cursor() as cursor:
            cursor.execute(FLOOR_SQL, [connection_id, connection_id, connection.audience_id])
            cursor.fetchall()

    funnel = identity_funnel(connection, with_partner_count=False)
    for stage in funnel.stages:
        lost = "; ".join(f"-{loss.count:,} {loss.reason[:60]}" for loss in stage.lost)
        print(f"  {stage.label[:60]:60s} {stage.count:>10,} {stage.unit:10s} {lost}")
    measured = best(args.runs, lambda: identity_funnel(connection, with_partner_count=False))
    bare = best(args.runs, floor)
    print(f"identity_funnel over {args.members:,} members: {measured:.2f} s (best of {args.runs})")
    print(f"floor, one bare pass over the same join:  {bare:.2f} s")
    print(f"ratio: {measured / bare:.2f}x")


if __name__ == "__main__":
    main()
