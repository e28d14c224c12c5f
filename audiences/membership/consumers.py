"""The consumers of the membership change log: who is told when members enter, leave or change.

audiences/ is upstream of everything that acts on membership and names none of it. A consumer registers
itself at start-up (forwarding's planner does, in ForwardingConfig.ready()) and the membership ledger
(audiences.membership.ledger) calls every registered consumer inside the writer's transaction, so what a
consumer writes (forwarding's outbox) commits or rolls back with the membership rows and the change log.

Writing a membership change while no consumer is registered raises ImproperlyConfigured: the change would
reach nobody, and partners would silently drift from the audience.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from django.core.exceptions import ImproperlyConfigured


@dataclass(frozen=True)
class MembershipDelta:
    """One audience's profiles that entered and left it."""

    entered: Sequence[int]
    left: Sequence[int]
    # profile id -> every identity (type, value) of these profiles, when the writer read them in this
    # transaction (real-time evaluation): a consumer need not read them again. None: not known.
    identities: Mapping[int, Sequence[tuple[str, str]]] | None = field(default=None, compare=False)


class MembershipConsumer(Protocol):
    """What a consumer of the change log implements. Every method runs in the writer's transaction."""

    def members_changed(self, deltas: Mapping[int, MembershipDelta]) -> None:
        """Profiles entered and left these audiences (audience id -> delta)."""

    def members_changed_in_tables(self, *, audience_id: int, entered_table: str | None, left_table: str | None) -> None:
        """A recompute's difference, too large for Python: the profiles that entered and left the audience are
        the `profile_id` column of these temporary tables (None: nobody), which live until the ledger drops
        them after this call."""

    def members_updated(
        self, *, profile_id: int, audience_ids: Sequence[int], identity_ids: Sequence[int] | None
    ) -> None:
        """A profile that stays a member of these audiences changed: new identities (`identity_ids`), or its
        attributes (`identity_ids` None: every identity of it is concerned)."""

    def identities_removed(
        self, *, profile_id: int, audience_ids: Sequence[int], identities: Sequence[tuple[str, str]]
    ) -> None:
        """A profile lost these identities (type, value) while a member of these audiences: remove each of them
        alone wherever the consumer sent it (the profile's other identities stay). They are deleted after this
        call, in the same transaction."""

    def profile_erasing(self, *, erasure_id: int, identities: Sequence[tuple[str, str]]) -> int:
        """A profile is being erased (audiences.erasure): it has left its audiences already (members_changed),
        and these identities (type, value) are deleted after this call, in the same transaction. Remove them
        from wherever else the consumer sent them; returns how many removes it planned."""


_consumers: list[MembershipConsumer] = []


def register_membership_consumer(consumer: MembershipConsumer) -> None:
    """Add a consumer (once: registering the same object again does nothing)."""
    if not any(registered is consumer for registered in _consumers):
        _consumers.append(consumer)


def membership_consumers() -> tuple[MembershipConsumer, ...]:
    """The registered consumers, in registration order; raises when there are none (see the module doc)."""
    if not _consumers:
        raise ImproperlyConfigured(
            "No membership consumer is registered, so membership changes would reach no partner. "
            "forwarding registers its planner in ForwardingConfig.ready(): is 'forwarding' in INSTALLED_APPS?"
        )
    return tuple(_consumers)
