"""manage.py snapshot_history [--days N]: the daily history of every audience and connection, now.

Beat does this hourly (forwarding.tasks.snapshot_history, the last 2 days); run it by hand to fill in
older days (`--days 30`): the figures are derived from the change log and the delivery attempts, so
rerunning only writes the same ones again."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from audiences.history import MAX_DAYS
from audiences.models import Audience
from config.progress import ProgressBar
from forwarding.history import snapshot_history


class Command(BaseCommand):
    help = "Take the daily snapshots (size, adds, drops; delivered, rejected) of the last N days."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--days", type=int, default=2, help=f"days back, today included (1 to {MAX_DAYS})")

    def handle(self, *args: Any, days: int, **options: Any) -> None:
        if not 1 <= days <= MAX_DAYS:
            self.stderr.write(f"--days must be from 1 to {MAX_DAYS}.")
            raise SystemExit(2)
        bar = ProgressBar(Audience.objects.count(), stream=self.stderr, label="audiences", unit="audiences")
        written = snapshot_history(days=days, progress=bar.advance)
        bar.finish()
        self.stdout.write(
            f"{written['audience_days']:,} audience days and {written['connection_days']:,} connection days written."
        )
