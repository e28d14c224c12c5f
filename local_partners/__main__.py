"""Run a local partner server in the foreground (the demo and manual end-to-end runs).

    python -m local_partners mailchimp --port 8025 --api-key demo-us6 --list abc123def0:Newsletter
    python -m local_partners braze --port 8026 --api-key demo-braze-key
    python -m local_partners meta --port 8027 --access-token demo-meta-token --audience 120000000000000001:Parisians

then point the partner's base URL override (PARTNER_API_BASE_URLS) at the printed URL. No Django:
the servers are standalone, so they start whatever state the project's apps are in.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from local_partners.braze import LocalBrazeServer
from local_partners.mailchimp import LocalMailchimpServer
from local_partners.meta import LocalMetaServer


def _parse_list_spec(spec: str) -> tuple[str, str]:
    """``ID[:NAME]`` -> (id, name)."""
    list_id, _, name = spec.partition(":")
    list_id = list_id.strip()
    if not list_id:
        raise argparse.ArgumentTypeError(f"an id is needed: {spec!r} (format ID[:NAME])")
    return list_id, name.strip()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same clean path as Ctrl-C: serve_forever unwinds and we stop.
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m local_partners", description=__doc__.splitlines()[0])
    partners = parser.add_subparsers(dest="partner", required=True)
    mailchimp = partners.add_parser("mailchimp", help="a local, in-memory Mailchimp Marketing API v3")
    mailchimp.add_argument("--host", default="127.0.0.1", help="Interface to bind (default 127.0.0.1).")
    mailchimp.add_argument("--port", type=int, default=8025, help="Port to listen on (0 = any free port).")
    mailchimp.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="Accept only this API key (repeatable). Without it any key is accepted.",
    )
    mailchimp.add_argument(
        "--list",
        action="append",
        dest="lists",
        default=[],
        type=_parse_list_spec,
        metavar="ID[:NAME]",
        help="Create an audience with this id and optional name at start (repeatable).",
    )
    mailchimp.add_argument("--verbose", action="store_true", help="Log every request.")
    mailchimp.add_argument(
        "--no-record-requests",
        action="store_false",
        dest="record_requests",
        help="Keep no copy of the requests received (benchmarks sending millions of members).",
    )
    braze = partners.add_parser("braze", help="a local, in-memory Braze REST API (POST /users/track)")
    braze.add_argument("--host", default="127.0.0.1", help="Interface to bind (default 127.0.0.1).")
    braze.add_argument("--port", type=int, default=8026, help="Port to listen on (0 = any free port).")
    braze.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        metavar="KEY",
        help="Accept only this REST API key (repeatable). Without it any key is accepted.",
    )
    braze.add_argument(
        "--rate-limit", type=int, default=3000, help="Requests allowed per window (default 3000, Braze's)."
    )
    braze.add_argument("--rate-window", type=float, default=3.0, help="The rate limit's window in seconds (default 3).")
    braze.add_argument("--verbose", action="store_true", help="Log every request.")
    meta = partners.add_parser("meta", help="a local, in-memory Meta Graph API (Custom Audiences)")
    meta.add_argument("--host", default="127.0.0.1", help="Interface to bind (default 127.0.0.1).")
    meta.add_argument("--port", type=int, default=8027, help="Port to listen on (0 = any free port).")
    meta.add_argument(
        "--access-token",
        action="append",
        dest="access_tokens",
        metavar="TOKEN",
        help="Accept only this access token (repeatable). Without it any token is accepted.",
    )
    meta.add_argument(
        "--audience",
        action="append",
        dest="audiences",
        default=[],
        type=_parse_list_spec,
        metavar="ID[:NAME]",
        help="Create a Custom Audience with this id (digits) and optional name at start (repeatable).",
    )
    meta.add_argument("--verbose", action="store_true", help="Log every request.")
    return parser


def _serve(server: LocalBrazeServer | LocalMailchimpServer | LocalMetaServer, name: str) -> int:
    """Serve in the foreground until Ctrl-C or SIGTERM."""
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    print(f"Local {name} API stopped.", flush=True)
    return 0


def serve_braze(options: argparse.Namespace) -> int:
    try:
        server = LocalBrazeServer(
            options.host,
            options.port,
            options.api_keys,
            rate_limit=options.rate_limit,
            rate_window=options.rate_window,
            verbose=options.verbose,
        )
    except OSError as exc:
        print(f"cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    print(f"Local Braze API listening on {server.base_url}")
    print(f"Rate limit: {server.rate_limit} requests per {server.rate_window:g} s (X-RateLimit-*, 429 beyond)")
    print(f"API keys: {', '.join(options.api_keys)}" if options.api_keys else "API keys: any")
    print("Quit with CONTROL-C.", flush=True)
    return _serve(server, "Braze")


def serve_meta(options: argparse.Namespace) -> int:
    try:
        server = LocalMetaServer(options.host, options.port, options.access_tokens, verbose=options.verbose)
    except OSError as exc:
        print(f"cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    for audience_id, name in options.audiences:
        server.create_audience(name or audience_id, audience_id=audience_id)
    print(f"Local Meta Graph API listening on {server.base_url}")
    print(f"Access tokens: {', '.join(options.access_tokens)}" if options.access_tokens else "Access tokens: any")
    for audience_id, name in options.audiences:
        print(f"  custom audience {audience_id} ({name or audience_id})")
    print("Quit with CONTROL-C.", flush=True)
    return _serve(server, "Meta")


def serve_mailchimp(options: argparse.Namespace) -> int:
    try:
        server = LocalMailchimpServer(
            options.host,
            options.port,
            options.api_keys,
            verbose=options.verbose,
            record_requests=options.record_requests,
        )
    except OSError as exc:
        print(f"cannot listen on {options.host}:{options.port}: {exc}", file=sys.stderr)
        return 1
    for list_id, name in options.lists:
        server.create_list(list_id, name)
    print(f"Local Mailchimp API listening on {server.base_url}")
    print(f"API keys: {', '.join(options.api_keys)}" if options.api_keys else "API keys: any")
    for list_id, name in options.lists:
        print(f"  list {list_id} ({name or list_id})")
    print("Quit with CONTROL-C.", flush=True)  # readers of a pipe (demo scripts) wait for the URL line
    return _serve(server, "Mailchimp")


def main(argv: list[str] | None = None) -> int:
    options = _parser().parse_args(argv)
    serve = {"braze": serve_braze, "meta": serve_meta}.get(options.partner, serve_mailchimp)
    return serve(options)


if __name__ == "__main__":
    sys.exit(main())
