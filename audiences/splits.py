"""Splitting an audience into A/B variations: up to 5 audiences, each a set share of its members.

Each variation is an ordinary audience (connectable like any other) whose criteria are "member of the
audience AND in buckets [from, to) of the audience's split" (docs/criteria.md, A/B splits). The seed is
the audience's id, so a profile's variation never changes: it follows the audience's membership (a member
who leaves the audience leaves its variation; variations are recomputed after the audience, as every
audience referring to another is), and splitting again with the same shares makes the same variations.
Shares add up to at most 100: what is left over is in no variation (a hold-out group)."""

from __future__ import annotations

from collections.abc import Sequence
from string import ascii_uppercase

from django.core.exceptions import ValidationError
from django.db import transaction

from audiences.criteria.buckets import BUCKETS, MAX_VARIATIONS
from audiences.models import Audience
from audiences.services import audience_create


def split_seed(audience: Audience) -> str:
    return f"audience-{audience.pk}"


def variation_criteria(audience: Audience, low: int, high: int) -> dict:
    return {
        "and": [
            {"audience": audience.pk, "operator": "member"},
            {"split": split_seed(audience), "buckets": [low, high]},
        ]
    }


def parse_percentages(text: str) -> list[int]:
    """'50, 30, 20' -> [50, 30, 20]; a ValidationError naming `percentages` otherwise."""
    try:
        values = [int(part) for part in text.replace(";", ",").split(",") if part.strip()]
    except ValueError:
        raise ValidationError({"percentages": ["Write whole percentages separated by commas, e.g. 50, 50."]}) from None
    return values


def clean_percentages(percentages: Sequence[int]) -> None:
    if not 1 <= len(percentages) <= MAX_VARIATIONS:
        raise ValidationError({"percentages": [f"Give 1 to {MAX_VARIATIONS} percentages, one per variation."]})
    if any(not isinstance(p, int) or isinstance(p, bool) or p < 1 for p in percentages):
        raise ValidationError({"percentages": ["Each variation needs at least 1%."]})
    if sum(percentages) > BUCKETS:
        raise ValidationError({"percentages": [f"The percentages add up to {sum(percentages)}%: at most 100%."]})


def audience_split(*, audience: Audience, percentages: Sequence[int]) -> list[Audience]:
    """Create the variations of `audience` (A, B, ... with these shares of its members), in one transaction.
    They are active when the audience is, drafts otherwise."""
    clean_percentages(percentages)
    if audience.status == Audience.Status.ARCHIVED:
        raise ValidationError({"percentages": ["An archived audience has no members to split."]})
    status = Audience.Status.ACTIVE if audience.status == Audience.Status.ACTIVE else Audience.Status.DRAFT
    variations = []
    low = 0
    with transaction.atomic():
        for letter, share in zip(ascii_uppercase, percentages, strict=False):
            high = low + share
            name = f"{audience.name[:80]} — {letter} ({share}%)"
            variations.append(
                audience_create(
                    name=name,
                    criteria=variation_criteria(audience, low, high),
                    description=f"Variation {letter} of “{audience.name}”: {share}% of its members "
                    f"(A/B split, buckets {low} to {high}).",
                    status=status,
                )
            )
            low = high
    return variations
