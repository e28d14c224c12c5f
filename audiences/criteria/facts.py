"""What the per-profile evaluator sees of a profile (docs/criteria.md, "The data a tree sees")."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class EventFact:
    name: str  # lower-cased
    attributes: Mapping[str, Any]  # names lower-cased
    timestamp: datetime  # aware, UTC


@dataclass
class ProfileFacts:
    profile_id: int
    attributes: Mapping[str, Any]  # names lower-cased
    identities: Sequence[tuple[str, str]] = ()
    events: Sequence[EventFact] = ()
    memberships: set[int] = field(default_factory=set)  # audience ids
