"""Run a command and start it again whenever it exits, until this supervisor is told to stop.

    python scripts/supervise.py --name worker -- .venv/bin/celery -A config worker --loglevel=INFO

honcho (``make run``) does not restart a process that exits: a Celery worker that dies (an
unrecoverable error, an OOM kill, kill -9) would stay dead, and nothing would be delivered until
a person noticed. The database is the durable record, so a restarted worker simply carries on.

- Each exit is logged on stderr, one line, with the exit code or signal and the wait before the
  restart. The wait doubles from ``--backoff`` up to ``--max-backoff`` while the command keeps
  failing fast, and starts again from ``--backoff`` once it ran ``--stable`` seconds.
- SIGTERM, SIGINT, SIGHUP and SIGQUIT are passed on to the command (SIGTERM: Celery's warm
  shutdown), and the supervisor then exits with the command's status, without restarting it.
  The command stays in the supervisor's process group, so honcho's kill of the group (SIGKILL
  after its grace period) reaches both.

Standard library only.
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from types import FrameType

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)


def _log(name: str, message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
    print(f"[{stamp}] supervise[{name}]: {message}", file=sys.stderr, flush=True)


def _describe(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exited with code {returncode}"


def _exit_status(returncode: int) -> int:
    """A shell's exit status for the command's return code (128 + N when killed by signal N)."""
    return returncode if returncode >= 0 else 128 - returncode


class Supervisor:
    def __init__(self, command: list[str], *, name: str, backoff: float, max_backoff: float, stable: float):
        self.command = command
        self.name = name
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.stable = stable
        self.child: subprocess.Popen | None = None
        # Plain attributes, not threading primitives: signal handlers run between bytecodes of
        # the main thread, and one taking a lock the main thread holds would deadlock.
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self.stop_signal is None:
            self.stop_signal = signum
        child = self.child
        if child is not None and child.poll() is None:
            child.send_signal(signum)

    def run(self) -> int:
        restarts = 0
        delay = self.backoff
        while True:
            started = time.monotonic()
            try:
                self.child = subprocess.Popen(self.command)
            except OSError as exc:
                _log(self.name, f"cannot start {self.command[0]}: {exc}")
                return 127
            if self.stop_signal is not None:  # a signal came while we were starting it
                self.child.send_signal(self.stop_signal)
            returncode = self.child.wait()
            if self.stop_signal is not None:
                return _exit_status(returncode)
            ran = time.monotonic() - started
            if ran >= self.stable:
                delay = self.backoff  # it had been running fine: this is a fresh failure
            restarts += 1
            _log(
                self.name,
                f"{_describe(returncode)} after {ran:.1f}s; restart #{restarts} in {delay:.1f}s "
                f"(pid {self.child.pid} was: {' '.join(self.command)})",
            )
            if self._wait_unless_stopped(delay):
                return _exit_status(returncode)
            delay = min(self.max_backoff, delay * 2)

    def _wait_unless_stopped(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True as soon as a stop signal has come."""
        deadline = time.monotonic() + seconds
        while self.stop_signal is None and time.monotonic() < deadline:
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        return self.stop_signal is not None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="", help="Name in the log lines (default: the command).")
    parser.add_argument("--backoff", type=float, default=1.0, help="First wait before a restart (seconds).")
    parser.add_argument("--max-backoff", type=float, default=30.0, help="Longest wait before a restart.")
    parser.add_argument(
        "--stable", type=float, default=60.0, help="A run this long resets the wait to --backoff (seconds)."
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    options = parser.parse_args(argv)
    command = options.command[1:] if options.command[:1] == ["--"] else options.command
    if not command:
        parser.error("give the command to run after --")
    supervisor = Supervisor(
        command,
        name=options.name or command[0],
        backoff=options.backoff,
        max_backoff=options.max_backoff,
        stable=options.stable,
    )
    for signum in FORWARDED:
        signal.signal(signum, supervisor.on_signal)
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
