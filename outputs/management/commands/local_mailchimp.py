"""``manage.py local_mailchimp``: run the local Mailchimp-compatible server in the foreground.

For the product demo and manual end-to-end runs, e.g.::

    python manage.py local_mailchimp --port 8025 --api-key demo-us6 --list abc123def0:Newsletter

then point the Mailchimp output's base URL override at the printed URL.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

# Deliberately no project models: the server is standalone and must start even while
# other apps are mid-change.
from outputs.local_partners.mailchimp import LocalMailchimpServer


def _parse_list_spec(spec: str) -> tuple[str, str]:
    """``ID[:NAME]`` -> (id, name)."""
    list_id, _, name = spec.partition(":")
    list_id = list_id.strip()
    if not list_id:
        raise CommandError(f"--list needs an id: {spec!r} (format ID[:NAME])")
    return list_id, name.strip()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    # Turn SIGTERM into the same clean path as Ctrl-C: serve_forever unwinds and we stop.
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = "Serve a local, in-memory Mailchimp Marketing API v3 (for the demo and end-to-end tests)."

    # System checks import every app's models; this command needs none of them.
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Interface to bind (default 127.0.0.1).")
        parser.add_argument("--port", type=int, default=8025, help="Port to listen on (0 = any free port).")
        parser.add_argument(
            "--api-key",
            action="append",
            dest="api_keys",
            metavar="KEY",
            help="Accept only this API key (repeatable). Without it any key is accepted.",
        )
        parser.add_argument(
            "--list",
            action="append",
            dest="lists",
            default=[],
            metavar="ID[:NAME]",
            help="Create an audience with this id and optional name at start (repeatable).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        lists = [_parse_list_spec(spec) for spec in options["lists"]]
        try:
            server = LocalMailchimpServer(
                options["host"],
                options["port"],
                options["api_keys"],
                verbose=options["verbosity"] >= 2,
            )
        except OSError as exc:
            raise CommandError(f"cannot listen on {options['host']}:{options['port']}: {exc}") from exc
        for list_id, name in lists:
            server.create_list(list_id, name)

        self.stdout.write(f"Local Mailchimp API listening on {server.base_url}")
        keys = options["api_keys"]
        self.stdout.write(f"API keys: {', '.join(keys)}" if keys else "API keys: any")
        for list_id, name in lists:
            self.stdout.write(f"  list {list_id} ({name or list_id})")
        self.stdout.write("Quit with CONTROL-C.")
        self.stdout.flush()  # readers of a pipe (demo scripts) wait for the URL line

        # Signal handlers can only be installed from the main thread (not e.g. call_command in a worker).
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
        self.stdout.write("Local Mailchimp API stopped.")
