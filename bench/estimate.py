"""The criteria builder's reads at scale (audiences/estimates.py), on a population made by bench/generate.py.

    .venv/bin/python bench/generate.py --profiles 1000000
    .venv/bin/python bench/estimate.py --profiles 1000000

Prints, best of --runs after one warm-up: the live estimate of "Potential Parisians" (validation, the names'
warnings, the count and the total) beside its floor, the bare count of the same member query; the names seen
(the sample behind the pickers, with one event's attribute names); and the warnings of a tree whose names
are all misspelt (the exact checks a sample cannot answer: the worst case).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from common import use_database

MISSPELT = {
    "and": [
        {"event": "Destnation Intro", "attributes": [{"attribute": "cty", "operator": "equals", "value": "Paris"}]},
        {"event": "Destination Intro", "attributes": [{"attribute": "cty", "operator": "equals", "value": "Paris"}]},
        {"attribute": "statuss", "operator": "equals", "value": "Premium"},
    ]
}


def best(runs: int, work: Callable[[], object]) -> tuple[float, object]:
    work()  # warm-up: caches
    timings = []
    result = None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        timings.append(time.perf_counter() - started)
    return min(timings), result


def main() -> None:
    parser = argparse.ArgumentParser(description="The criteria builder's reads at scale")
    parser.add_argument("--profiles", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    use_database(f"af_bench_{args.profiles}", fresh=False)

    from django.db import connection
    from django.utils import timezone

    from audiences.criteria.sql import member_sql
    from audiences.estimates import criteria_estimate, names_seen, unseen_name_warnings
    from forwarding.management.commands.demo import CRITERIA as TUTORIAL  # "Potential Parisians"

    now = timezone.now()

    def floor() -> int:
        sql, params = member_sql(TUTORIAL, now=now)
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM ({sql}) AS members", params)
            return cursor.fetchone()[0]

    estimate_s, estimate = best(args.runs, lambda: criteria_estimate(criteria=TUTORIAL, now=now))
    floor_s, floor_count = best(args.runs, floor)
    names_s, names = best(args.runs, lambda: names_seen(event="Destination Intro"))
    warnings_s, warnings = best(args.runs, lambda: unseen_name_warnings(MISSPELT))
    assert estimate.count == floor_count, (estimate.count, floor_count)
    print(f"profiles: {estimate.total_profiles:,}")
    print(
        f"estimate of Potential Parisians: {estimate_s:.3f} s ({estimate.count:,} profiles); "
        f"bare count of the same query: {floor_s:.3f} s; ratio {estimate_s / floor_s:.2f}x"
    )
    print(
        f"names seen (sample of {names.sample_profiles:,} profiles, {names.sample_events:,} events, one event's "
        f"attributes): {names_s:.3f} s ({len(names.attributes)} attribute names, {len(names.events)} event names)"
    )
    print(f"warnings for a tree of misspelt names: {warnings_s:.3f} s, {len(warnings)} warnings: {warnings}")


if __name__ == "__main__":
    main()
