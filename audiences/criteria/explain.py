"""Why a profile matches a tree: the conditions that held for it, with what they saw.

Walks the tree with the per-profile evaluator's own compiled conditions (so it cannot disagree with it):
in an `and` every child held, so each contributes; in an `or`, the children that held; an `exclude`
contributes its child as a condition that did not hold. The profile page (audiences/admin_profiles.py)
words each one for people."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audiences.criteria.buckets import profile_bucket
from audiences.criteria.evaluator import compile_criteria
from audiences.criteria.facts import ProfileFacts


@dataclass(frozen=True)
class HeldCondition:
    node: Mapping[str, Any]  # the leaf condition
    held: bool  # False: an excluded condition, which did not hold
    seen: Any = None  # the attribute's value, the events counted, the split's bucket


def conditions_held(tree: Mapping, facts: ProfileFacts, now: datetime) -> list[HeldCondition]:
    """The leaf conditions that make `tree` match this profile at `now`; [] when it does not match."""
    if not compile_criteria(tree)(facts, now):
        return []
    return _why(tree, facts, now, held=True)


def _why(node: Mapping, facts: ProfileFacts, now: datetime, *, held: bool) -> list[HeldCondition]:
    if "and" in node or "or" in node:
        children = node.get("and", node.get("or"))
        if held:
            # Matching: every child of an `and`, the children that held of an `or`.
            chosen = [c for c in children if "and" in node or compile_criteria(c)(facts, now)]
        else:
            # Not matching: the children that failed an `and`, every child of an `or`.
            chosen = [c for c in children if "or" in node or not compile_criteria(c)(facts, now)]
        return [reason for child in chosen for reason in _why(child, facts, now, held=held)]
    if "exclude" in node:
        return _why(node["exclude"], facts, now, held=not held)
    return [HeldCondition(node=node, held=held, seen=_seen(node, facts, now))]


def _seen(node: Mapping, facts: ProfileFacts, now: datetime) -> Any:
    if "attribute" in node:
        return facts.attributes.get(node["attribute"].lower())
    if "event" in node:
        # The events of that name the condition's window and filters accept (without its frequency).
        single = {**node, "frequency": {"operator": "at_least", "count": 1}}
        name = node["event"].lower()
        return sum(
            1
            for event in facts.events
            if event.name == name and compile_criteria(single)(ProfileFacts(0, {}, events=[event]), now)
        )
    if "split" in node:
        return profile_bucket(facts.profile_id, node["split"])
    return None
