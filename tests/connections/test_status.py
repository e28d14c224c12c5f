"""What a connection's status allows (connections.status)."""

from __future__ import annotations

import pytest

from connections import status
from connections.models import Connection

S = Connection.Status


@pytest.mark.parametrize(
    ("value", "plans", "delivers", "pause", "resume", "test", "delete"),
    [
        (S.SENDING, True, True, True, False, True, True),
        (S.PAUSED, True, False, False, True, True, True),
        (S.FAULTED, True, False, True, True, True, True),
        (S.ENDING, False, False, False, False, False, False),
    ],
)
def test_each_status_allows(value, plans, delivers, pause, resume, test, delete):
    assert (value in status.PLANNING) is plans
    assert status.delivers(value) is delivers
    assert status.can_pause(value) is pause
    assert status.can_resume(value) is resume
    assert status.can_test(value) is test
    assert status.can_delete(value) is delete


def test_every_status_has_a_rule():
    # A new status must be placed in these rules, not fall through them.
    assert set(S.values) == set(status.PLANNING) | {S.ENDING}
