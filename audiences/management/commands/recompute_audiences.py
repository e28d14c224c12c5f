"""manage.py recompute_audiences [ID ...]: recompute audiences now (all active ones by default), with a
progress bar; each in its own transaction, as the periodic recompute does, one failure not stopping the rest."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from audiences.membership.recompute import recompute_audience
from audiences.models import Audience
from config.progress import ProgressBar


class Command(BaseCommand):
    help = "Recompute audiences now (their difference is forwarded), showing progress."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("audience_ids", nargs="*", type=int, help="audience ids (default: every active one)")

    def handle(self, *args: Any, audience_ids: list[int], **options: Any) -> None:
        if audience_ids:
            missing = set(audience_ids) - set(Audience.objects.filter(pk__in=audience_ids).values_list("pk", flat=True))
            if missing:
                raise CommandError(f"No audience with id {', '.join(map(str, sorted(missing)))}.")
        else:
            audience_ids = list(
                Audience.objects.filter(status=Audience.Status.ACTIVE).order_by("pk").values_list("pk", flat=True)
            )
        bar = ProgressBar(len(audience_ids), stream=self.stderr, label="recompute", unit="audiences")
        entered = left = failed = 0
        for audience_id in audience_ids:
            try:
                result = recompute_audience(audience_id, reason="recomputed by hand")
            except Exception as exc:  # one audience's failure is reported, the others still run
                failed += 1
                self.stderr.write(f"\naudience {audience_id} failed: {exc}\n")
            else:
                entered += result.entered
                left += result.left
            bar.advance()
        bar.finish()
        self.stdout.write(
            f"{len(audience_ids) - failed} recomputed, {failed} failed: {entered:,} entered, {left:,} left."
        )
        if failed:
            raise SystemExit(1)
