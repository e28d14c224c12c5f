"""A misbehaving partner against the partner HTTP client: memory for a huge answer, time for a trickle.

    .venv/bin/python bench/partner_bounds.py              # 200 MiB answer, a byte a second for 5 s
    .venv/bin/python bench/partner_bounds.py --size-mib 500 --deadline 2

Prints the process's peak RSS growth while it receives a huge answer (the floor: its RSS before
the call), and how long a call to a partner trickling one byte a second lasts against the call
deadline (PARTNER_CALL_DEADLINE_SECONDS) while the read timeout is longer than the trickle's
interval. No database needed: the servers are local_partners.misbehaving's, in this process.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import django
from common import peak_rss_mb  # sets sys.path and DJANGO_SETTINGS_MODULE


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=200, help="size of the huge answer")
    parser.add_argument("--deadline", type=float, default=1.5, help="PARTNER_CALL_DEADLINE_SECONDS for the trickle")
    parser.add_argument("--trickle-bytes", type=int, default=5, help="bytes the trickle sends, one a second")
    args = parser.parse_args()
    os.environ.setdefault("DATABASE_URL", "sqlite:///:memory:")
    django.setup()
    from django.conf import settings

    from local_partners.misbehaving import MIB, MisbehavingServer
    from outputs.partners.http import PartnerClient, PartnerError

    def call(server: MisbehavingServer) -> tuple[float, str]:
        started = time.monotonic()
        try:
            PartnerClient(server.url).request("POST", "/lists/abc", json={"members": []})
            outcome = "answered"
        except PartnerError as exc:
            outcome = f"{exc.__class__.__name__}: {exc.message}"
        return time.monotonic() - started, outcome

    cap = settings.PARTNER_MAX_RESPONSE_BYTES
    with MisbehavingServer("huge", size=args.size_mib * MIB) as server:
        floor = peak_rss_mb()
        seconds, outcome = call(server)
        peak = peak_rss_mb()
    print(f"huge answer ({args.size_mib} MiB, cap {cap / MIB:.0f} MiB): {outcome}")
    growth = peak - floor
    print(f"  peak RSS {peak:.1f} MiB: {growth:+.1f} MiB over the {floor:.1f} MiB before the call ({seconds:.2f} s)")

    settings.PARTNER_CALL_DEADLINE_SECONDS = args.deadline
    read_timeout = args.trickle_bytes + 5.0
    settings.FORWARDING = {**settings.FORWARDING, "HTTP_TIMEOUT": (5.0, read_timeout)}
    with MisbehavingServer("trickle_body", size=args.trickle_bytes, interval=1.0) as server:
        seconds, outcome = call(server)
    print(f"trickle ({args.trickle_bytes} bytes, one a second; read timeout {read_timeout:g} s): {outcome}")
    overshoot = seconds - args.deadline
    print(f"  the call lasted {seconds:.2f} s against a deadline of {args.deadline:g} s: {overshoot:+.2f} s")


if __name__ == "__main__":
    sys.exit(main())
