"""The profile's page explained: its recent events and, for each audience it is in, why (which conditions
held, with what they saw: audiences/criteria/explain.py), in a marketer's words (audiences/admin_builder.py).

ProfileAdmin (audiences/admin.py) puts `profile_page_context()` on its change page; forwarding adds, per
connection, what the partner holds for the profile's identities (forwarding/admin/profiles.py)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.urls import reverse
from django.utils import timezone

from audiences import criteria as criteria_lang
from audiences.admin_builder import (
    AUDIENCE_OPERATOR_LABELS,
    FREQUENCY_LABELS,
    IDENTITY_OPERATOR_LABELS,
    OPERATOR_LABELS,
)
from audiences.criteria.explain import HeldCondition, conditions_held
from audiences.criteria.facts import ProfileFacts
from audiences.membership.evaluation import load_facts
from audiences.models import Audience, AudienceMembership, Event, Profile

RECENT_EVENTS = 20


def _value(value: Any) -> str:
    if isinstance(value, dict) and "amount" in value:
        return f"{value['amount']} {value['unit']}"
    if isinstance(value, list):
        return " and ".join(_value(v) for v in value)
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def describe(condition: HeldCondition, audience_names: dict[int, str]) -> str:
    """One condition as a sentence, with what the profile showed it."""
    node = condition.node
    if "attribute" in node:
        text = f"{node['attribute']} {OPERATOR_LABELS[node['operator']]}"
        if "value" in node:
            text += f" {_value(node['value'])}"
        seen = "not set" if condition.seen is None else _value(condition.seen)
        text += f" (its value: {seen})"
    elif "identity" in node:
        text = f"{node['identity']} identity {IDENTITY_OPERATOR_LABELS[node['operator']]}"
        if "value" in node:
            text += f" {_value(node['value'])}"
    elif "event" in node:
        frequency = node.get("frequency") or {"operator": "more_than", "count": 0}
        recency = node.get("recency") or {"within_last": {"amount": 30, "unit": "days"}}
        window = (
            f"in the last {_value(recency['within_last'])}"
            if "within_last" in recency
            else f"between {_value(recency['between'])}"
        )
        filters = ", ".join(
            f"{c['attribute']} {OPERATOR_LABELS[c['operator']]}" + (f" {_value(c['value'])}" if "value" in c else "")
            for c in node.get("attributes", ())
        )
        text = (
            f"did “{node['event']}”{f' ({filters})' if filters else ''} "
            f"{FREQUENCY_LABELS[frequency['operator']]} {frequency['count']} times {window} "
            f"({condition.seen} such events)"
        )
    elif "audience" in node:
        name = audience_names.get(node["audience"], f"audience {node['audience']}")
        text = f"{AUDIENCE_OPERATOR_LABELS[node['operator']]} “{name}”"
    else:  # split
        low, high = node["buckets"]
        seed = _value(node["split"])
        text = f"falls in the A/B split's buckets {low}% to {high}% (seed {seed}; its bucket: {condition.seen})"
    return text if condition.held else f"not: {text}"


def why_members(profile: Profile, *, now: datetime | None = None) -> list[dict[str, Any]]:
    """For each audience the profile is in: the audience, since when, and the conditions that hold now."""
    now = now or timezone.now()
    memberships = list(
        AudienceMembership.objects.filter(profile=profile).select_related("audience").order_by("audience__name")
    )
    trees = [m.audience.criteria for m in memberships]
    starts = [s for s in (criteria_lang.event_window_start(t, now) for t in trees) if s is not None]
    facts = load_facts([profile.pk], now=now, events_since=min(starts) if starts else None).get(
        profile.pk, ProfileFacts(profile_id=profile.pk, attributes={})
    )
    names = dict(Audience.objects.values_list("pk", "name"))
    rows = []
    for membership in memberships:
        audience = membership.audience
        held = conditions_held(audience.criteria, facts, now) if audience.status == Audience.Status.ACTIVE else []
        if audience.status != Audience.Status.ACTIVE:
            reasons = [f"the audience is {audience.status}: its members leave at its next calculation"]
        elif held:
            reasons = [describe(condition, names) for condition in held] or ["its criteria hold for every profile"]
        else:
            reasons = ["its criteria no longer hold: it leaves at the next evaluation"]
        rows.append(
            {
                "audience": audience,
                "url": reverse("admin:audiences_audience_change", args=[audience.pk]),
                "entered_at": membership.entered_at,
                "reasons": reasons,
            }
        )
    return rows


def profile_page_context(profile: Profile) -> dict[str, Any]:
    return {
        "recent_events": list(Event.objects.filter(profile=profile).order_by("-timestamp", "-id")[:RECENT_EVENTS]),
        "recent_events_limit": RECENT_EVENTS,
        "audience_reasons": why_members(profile),
    }
