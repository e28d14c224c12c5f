"""A progress bar for long management commands: done / total, percentage, rate and time left.

On a terminal the bar is redrawn in place (carriage return); otherwise (a log, a pipe, a test's buffer)
a line is written at each tenth of the way and at the end, so logs stay short."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

WIDTH = 30


def eta_text(seconds: float | None) -> str:
    """12 s, 3 min 4 s, 1 h 2 min; "—" when unknown."""
    if seconds is None:
        return "—"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60} min"


class ProgressBar:
    def __init__(
        self, total: int, *, stream: TextIO, label: str, unit: str = "", clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = max(total, 0)
        self.stream = stream
        self.label = label
        self.unit = unit
        self.clock = clock
        self.started = clock()
        self.done = 0
        self.tty = bool(getattr(stream, "isatty", lambda: False)())
        self._last_tenth = -1

    def line(self) -> str:
        fraction = self.done / self.total if self.total else 1.0
        filled = int(fraction * WIDTH)
        elapsed = max(self.clock() - self.started, 1e-9)
        rate = self.done / elapsed
        left = (self.total - self.done) / rate if rate > 0 else None
        unit = f" {self.unit}" if self.unit else ""
        return (
            f"{self.label} [{'#' * filled}{'.' * (WIDTH - filled)}] {self.done:,}/{self.total:,}{unit} "
            f"{fraction:.0%} {rate:,.1f}/s, {eta_text(left)} left"
        )

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total) if self.total else self.done + n
        if self.tty:
            self.stream.write("\r" + self.line())
            self.stream.flush()
            return
        tenth = int(self.done * 10 / self.total) if self.total else 10
        if tenth != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(self.line() + "\n")

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\r" + self.line() + "\n")
        elif self._last_tenth != 10:
            self.stream.write(self.line() + "\n")
        self.stream.flush()
