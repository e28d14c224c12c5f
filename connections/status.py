"""What a connection's status allows: pure rules, no database.

sending: changes are planned and delivered. paused: planned, not delivered (resuming catches up).
faulted: as paused, after the partner refused us; resuming sends again. ending: deleted, cleaning up at the
partner; nothing is planned or delivered any more and no status change revives it.
"""

from __future__ import annotations

from connections.models import Connection

Status = Connection.Status

# A paused or faulted connection keeps its outbox filling (coalesced), so resuming catches up.
PLANNING = frozenset({Status.SENDING, Status.PAUSED, Status.FAULTED})
# Connected: counted among the audience's connected outputs.
CONNECTED = PLANNING
PAUSABLE = frozenset({Status.SENDING, Status.FAULTED})
RESUMABLE = frozenset({Status.PAUSED, Status.FAULTED})


def delivers(status: str) -> bool:
    return status == Status.SENDING


def can_pause(status: str) -> bool:
    return status in PAUSABLE


def can_resume(status: str) -> bool:
    return status in RESUMABLE


def can_test(status: str) -> bool:
    return status != Status.ENDING


def can_delete(status: str) -> bool:
    """An ending connection is already being deleted."""
    return status != Status.ENDING
