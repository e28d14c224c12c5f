"""Profiles written through the REST API: identities and attributes validated, the profile found or created
by its identities, and the active audiences re-evaluated for it, in one transaction."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError
from django.db.models import Q

from audiences.identities import normalise_identity
from audiences.membership.evaluation import evaluate_profiles
from audiences.membership.ledger import publish_identities_removed, publish_members_updated
from audiences.membership.locks import lock_audiences_for_evaluation
from audiences.models import Audience, AudienceMembership, Identity, Profile
from config.api_errors import ConflictError
from config.db import atomic_with_reconnect

logger = logging.getLogger(__name__)

# mParticle's limits for user attributes.
MAX_ATTRIBUTE_NAME = 256
MAX_ATTRIBUTE_VALUE = 4096
MAX_ATTRIBUTE_LIST = 1000


class ProfileConflict(ConflictError):
    """The identities given point to more than one profile; nothing was written (the API answers 409)."""

    code = "profile_conflict"

    def __init__(self, profile_ids: Sequence[int], identities: Sequence[str]):
        self.profile_ids = list(profile_ids)
        self.identities = list(identities)
        super().__init__(
            f"The identities {', '.join(self.identities)} belong to different profiles "
            f"({', '.join(str(p) for p in self.profile_ids)}); merge them first."
        )

    def response_data(self) -> dict[str, Any]:
        # The identities are the field at fault; the profiles are what to merge.
        return {
            **super().response_data(),
            "errors": {"identities": [str(self)]},
            "profile_ids": sorted(self.profile_ids),
        }


@dataclass
class ProfileUpsertResult:
    profile: Profile
    created: bool
    entered: list[int] = field(default_factory=list)  # audience ids
    left: list[int] = field(default_factory=list)


# --- validation ------------------------------------------------------------------------------


def clean_identities(identities: Any) -> list[tuple[str, str]]:
    """[{"type": ..., "value": ...}, ...] -> unique normalised pairs; errors name `identities[i].field`."""
    if not isinstance(identities, list) or not identities:
        raise ValidationError({"identities": ["Give at least one identity as a list of {type, value} objects."]})
    errors: dict[str, list[str]] = {}
    pairs: list[tuple[str, str]] = []
    for index, item in enumerate(identities):
        if not isinstance(item, Mapping):
            errors[f"identities[{index}]"] = ["Expected an object with 'type' and 'value'."]
            continue
        extra = set(item) - {"type", "value"}
        if extra:
            errors[f"identities[{index}].{sorted(extra)[0]}"] = ["Unknown key."]
            continue
        identity_type = item.get("type")
        try:
            value = normalise_identity(identity_type, item.get("value"))
        except ValidationError as exc:
            name = "type" if exc.code == "unknown_type" else "value"
            errors[f"identities[{index}].{name}"] = exc.messages
            continue
        if (identity_type, value) not in pairs:
            pairs.append((identity_type, value))
    if errors:
        raise ValidationError(errors)
    return pairs


def clean_attributes(attributes: Any) -> dict[str, Any]:
    """User attributes: names <= 256 characters, values scalars or lists; None deletes."""
    if attributes is None:
        return {}
    if not isinstance(attributes, Mapping):
        raise ValidationError({"attributes": ["Expected an object of attribute name -> value."]})
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, Any] = {}
    for name, value in attributes.items():
        path = f"attributes.{name}"
        if not isinstance(name, str) or not name.strip():
            errors["attributes"] = ["Attribute names may not be blank."]
            continue
        if len(name) > MAX_ATTRIBUTE_NAME:
            errors[f"attributes.{name[:40]}…"] = [f"Attribute names are at most {MAX_ATTRIBUTE_NAME} characters."]
            continue
        if isinstance(value, list):
            if len(value) > MAX_ATTRIBUTE_LIST:
                errors[path] = [f"Lists hold at most {MAX_ATTRIBUTE_LIST} entries."]
                continue
            bad = [v for v in value if not isinstance(v, str | int | float | bool) or len(str(v)) > MAX_ATTRIBUTE_VALUE]
            if bad:
                errors[path] = [
                    f"List entries must be strings, numbers or booleans of at most {MAX_ATTRIBUTE_VALUE} characters."
                ]
                continue
        elif value is not None and not isinstance(value, str | int | float | bool):
            errors[path] = ["Values must be strings, numbers, booleans, lists of those, or null to delete."]
            continue
        elif isinstance(value, str) and len(value) > MAX_ATTRIBUTE_VALUE:
            errors[path] = [f"Values are at most {MAX_ATTRIBUTE_VALUE} characters."]
            continue
        # Attribute names are case-insensitive: stored lower-cased (docs/criteria.md).
        cleaned[name.lower()] = value
    if errors:
        raise ValidationError(errors)
    return cleaned


# --- profiles --------------------------------------------------------------------------------


def profile_upsert(*, identities: Any, attributes: Any = None) -> ProfileUpsertResult:
    """Find (or create) the profile these identities name, add new identities, merge attributes,
    and re-evaluate the active audiences for it. One transaction; nothing is written on error."""
    pairs = clean_identities(identities)
    cleaned_attributes = clean_attributes(attributes)
    # Two requests may create the same new identity at once: the loser retries and finds it.
    for attempt in range(3):
        try:
            # Not replayed after a connection lost in COMMIT: the answer (created, audiences
            # entered) would describe the replay, not what was stored (config/db.py).
            return atomic_with_reconnect(lambda: _profile_upsert(pairs, cleaned_attributes))
        except IntegrityError:
            if attempt == 2:
                raise
            logger.info("profile upsert raced on a new identity; retrying")
    raise AssertionError("unreachable")


def _profile_upsert(pairs: list[tuple[str, str]], attributes: dict[str, Any]) -> ProfileUpsertResult:
    match = Q()
    for identity_type, value in pairs:
        match |= Q(type=identity_type, value=value)
    existing = list(Identity.objects.filter(match).values_list("type", "value", "profile_id"))
    profile_ids = sorted({row[2] for row in existing})
    if len(profile_ids) > 1:
        raise ProfileConflict(profile_ids, [f"{t}:{v}" for t, v, _ in existing])
    created = not profile_ids
    if created:
        profile = Profile.objects.create(attributes={})
    else:
        # Serialise concurrent updates of one profile (attribute merge + evaluation). FOR NO KEY UPDATE:
        # rows that point at the profile (an outbox backfill running meanwhile) check it with KEY SHARE,
        # which FOR UPDATE would block while this waits for the audience lock they hold: a deadlock.
        profile = Profile.objects.select_for_update(no_key=True).get(pk=profile_ids[0])
    known = {(t, v) for t, v, _ in existing}
    new_identities = [Identity(profile=profile, type=t, value=v) for t, v in pairs if (t, v) not in known]
    Identity.objects.bulk_create(new_identities)

    merged = dict(profile.attributes)
    for name, value in attributes.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = value
    attributes_changed = merged != profile.attributes
    if attributes_changed or created:
        profile.attributes = merged
        profile.save(update_fields=["attributes", "updated_at"])

    result = ProfileUpsertResult(profile=profile, created=created)
    if created or attributes_changed or new_identities:
        _evaluate_profile(
            result,
            new_identity_ids=[i.pk for i in new_identities],
            attributes_changed=attributes_changed,
        )
    return result


def _evaluate_profile(result: ProfileUpsertResult, *, new_identity_ids: list[int], attributes_changed: bool) -> None:
    profile = result.profile
    entered, left = evaluate_profiles([profile.pk], reason="profile update").get(profile.pk, ([], []))
    result.entered.extend(entered)
    result.left.extend(left)
    if not (attributes_changed or new_identity_ids):
        return
    # Members who stay: partners get new identities, and fresh attributes where they changed.
    stayed = (
        AudienceMembership.objects.filter(profile=profile, audience__status=Audience.Status.ACTIVE)
        .exclude(audience_id__in=entered)
        .values_list("audience_id", flat=True)
    )
    publish_members_updated(
        profile_id=profile.pk,
        audience_ids=list(stayed),
        identity_ids=None if attributes_changed else new_identity_ids,
    )


# --- losing an identity ------------------------------------------------------------------------


@dataclass
class IdentityRemoveResult:
    profile: Profile
    entered: list[int] = field(default_factory=list)  # audience ids, re-evaluated without the identity
    left: list[int] = field(default_factory=list)


def profile_identity_remove(*, profile_id: int, identity: Any) -> IdentityRemoveResult:
    """Take one identity ({type, value}) off a profile: where the profile is a member, the consumers remove that
    identity alone (a partner keeps the profile's other identities), then the audiences are evaluated again
    without it. One transaction. Raises Profile.DoesNotExist for an unknown profile, ValidationError naming
    `type` / `value` for a bad identity, one the profile does not hold, or its last one (a profile is found
    by its identities: erase it instead)."""
    try:
        ((identity_type, value),) = clean_identities([identity])
    except ValidationError as exc:
        raise ValidationError(
            {k.removeprefix("identities[0]").lstrip(".") or "identity": v for k, v in exc.message_dict.items()}
        ) from None
    return atomic_with_reconnect(lambda: _identity_remove(profile_id, identity_type, value))


def _identity_remove(profile_id: int, identity_type: str, value: str) -> IdentityRemoveResult:
    profile = Profile.objects.select_for_update(no_key=True).get(pk=profile_id)
    identities = list(Identity.objects.filter(profile=profile).values_list("pk", "type", "value"))
    held = next((pk for pk, t, v in identities if (t, v) == (identity_type, value)), None)
    if held is None:
        raise ValidationError({"value": [f"Profile {profile.pk} has no {identity_type} identity '{value}'."]})
    if len(identities) == 1:
        raise ValidationError(
            {"value": ["This is the profile's last identity, by which it is found: erase the profile instead."]}
        )
    audience_ids = list(AudienceMembership.objects.filter(profile=profile).values_list("audience_id", flat=True))
    # Shared, as real-time evaluation takes them, before reading the audiences' connections: a connect (which
    # takes them exclusively) then either backfills without this identity or is seen by the consumers.
    lock_audiences_for_evaluation(audience_ids)
    audience_ids = list(AudienceMembership.objects.filter(profile=profile).values_list("audience_id", flat=True))
    publish_identities_removed(profile_id=profile.pk, audience_ids=audience_ids, identities=[(identity_type, value)])
    Identity.objects.filter(pk=held).delete()
    entered, left = evaluate_profiles([profile.pk], reason="identity removed").get(profile.pk, ([], []))
    return IdentityRemoveResult(profile=profile, entered=list(entered), left=list(left))
