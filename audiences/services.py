"""Writes for profiles and audiences. Membership changes flow into forwarding in the same transaction."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Q

from audiences import criteria as criteria_lang
from audiences import evaluation
from audiences.identities import normalise_identity
from audiences.models import Audience, AudienceMembership, Identity, MembershipChange, Profile
from config.db import atomic_with_reconnect
from forwarding import planner

logger = logging.getLogger(__name__)

# mParticle's limits for user attributes.
MAX_ATTRIBUTE_NAME = 256
MAX_ATTRIBUTE_VALUE = 4096
MAX_ATTRIBUTE_LIST = 1000


class ProfileConflict(Exception):
    """The identities given point to more than one profile; nothing was written."""

    def __init__(self, profile_ids: Sequence[int], identities: Sequence[str]):
        self.profile_ids = list(profile_ids)
        self.identities = list(identities)
        super().__init__(
            f"The identities {', '.join(self.identities)} belong to different profiles "
            f"({', '.join(str(p) for p in self.profile_ids)}); merge them first."
        )


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


def clean_audience_fields(fields: Mapping[str, Any], *, audience_id: int | None = None) -> None:
    """Validate the audience fields given (only those); every error names its field. `audience_id`: the
    audience being edited (None for a new one), so criteria referring back to it are refused."""
    errors: dict[str, list[str]] = {}
    for key in ("name", "external_name", "description"):
        if key in fields and fields[key] is not None and not isinstance(fields[key], str):
            errors[key] = ["Expected a string."]
    if "name" in fields and not errors.get("name"):
        name = fields["name"]
        if name is None or not name.strip():
            errors["name"] = ["This field may not be blank."]
        elif len(name.strip()) > 100:
            errors["name"] = ["Ensure this field has no more than 100 characters."]
    external_name = fields.get("external_name")
    if isinstance(external_name, str) and len(external_name.strip()) > 100:
        errors["external_name"] = ["Ensure this field has no more than 100 characters."]
    if "criteria" in fields:
        try:
            criteria_lang.validate_criteria(fields["criteria"], audience_id=audience_id)
        except ValidationError as exc:
            errors["criteria"] = exc.messages
    if "status" in fields and fields["status"] not in Audience.Status.values:
        errors["status"] = [f"'{fields['status']}' is not one of {', '.join(Audience.Status.values)}."]
    if errors:
        raise ValidationError(errors)


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
        # Serialise concurrent updates of one profile (attribute merge + evaluation).
        profile = Profile.objects.select_for_update().get(pk=profile_ids[0])
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
    entered, left = evaluation.evaluate_profiles([profile.pk], reason="profile update").get(profile.pk, ([], []))
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
    planner.plan_membership_changes(
        [(audience_id, [profile.pk], "add") for audience_id in stayed],
        identity_ids=None if attributes_changed else new_identity_ids,
    )


# --- membership ------------------------------------------------------------------------------


def _apply_delta(audience_id: int, *, entered: Sequence[int], left: Sequence[int], now, reason: str) -> None:
    """Write one audience's membership changes (see apply_membership_deltas)."""
    apply_membership_deltas({audience_id: (entered, left)}, now=now, reason=reason)


def apply_membership_deltas(deltas: Mapping[int, tuple[Sequence[int], Sequence[int]]], *, now, reason: str) -> None:
    """Write membership rows and the change log, and plan the partner messages, for several
    audiences at once (audience id -> (entered profile ids, left profile ids)), in the caller's
    transaction. A fixed handful of statements whatever the number of audiences: real-time
    evaluation of a bulk request changes many audiences at once."""
    deltas = {a: (list(e), list(lf)) for a, (e, lf) in deltas.items() if e or lf}
    if not deltas:
        return
    memberships = [
        AudienceMembership(audience_id=a, profile_id=p, entered_at=now)
        for a, (entered, _) in deltas.items()
        for p in entered
    ]
    AudienceMembership.objects.bulk_create(memberships)
    leaving = Q()
    for audience_id, (_, left) in deltas.items():
        if left:
            leaving |= Q(audience_id=audience_id, profile_id__in=left)
    if leaving:
        AudienceMembership.objects.filter(leaving).delete()
    MembershipChange.objects.bulk_create(
        [
            MembershipChange(audience_id=a, profile_id=p, kind=kind, reason=reason, at=now)
            for a, (entered, left) in deltas.items()
            for kind, profiles in (("entered", entered), ("left", left))
            for p in profiles
        ]
    )
    planner.plan_membership_changes(
        [(a, entered, "add") for a, (entered, _) in deltas.items() if entered]
        + [(a, left, "remove") for a, (_, left) in deltas.items() if left]
    )


def audience_recompute(*, audience_id: int, criteria_version: int | None = None) -> dict[str, int]:
    """Recompute an audience's whole membership and apply only the difference (audiences.recompute).

    A stale request (criteria changed since it was queued) is a no-op. Returns counts.
    """
    from audiences import recompute

    result = recompute.recompute_audience(audience_id, criteria_version=criteria_version)
    return {"entered": result.entered, "left": result.left, "skipped": int(result.skipped)}


# --- audiences -------------------------------------------------------------------------------


def _schedule_recompute(audience: Audience) -> None:
    from audiences.tasks import recompute_audience
    from forwarding.doorbell import send_safely

    version = audience.criteria_version
    transaction.on_commit(lambda: send_safely(recompute_audience, audience.pk, version))


def audience_create(
    *,
    name: str,
    criteria: Any,
    external_name: str = "",
    description: str = "",
    status: str = Audience.Status.DRAFT,
) -> Audience:
    clean_audience_fields(
        {
            "name": name,
            "external_name": external_name,
            "description": description,
            "criteria": criteria,
            "status": status,
        }
    )
    if Audience.objects.filter(name=name.strip()).exists():
        raise ValidationError({"name": [f"An audience named '{name.strip()}' already exists."]})
    try:
        with transaction.atomic():
            audience = Audience.objects.create(
                name=name.strip(),
                external_name=(external_name or "").strip(),
                description=description or "",
                criteria=criteria,
                depends_on_time=criteria_lang.depends_on_time(criteria),
                status=status,
            )
            if status == Audience.Status.ACTIVE:
                _schedule_recompute(audience)
    except IntegrityError:  # the same name created meanwhile by someone else
        raise ValidationError({"name": [f"An audience named '{name.strip()}' already exists."]}) from None
    return audience


def audience_update(*, audience: Audience, **changes: Any) -> Audience:
    """Update name, external_name, description, criteria and/or status.

    Activating computes the membership; new criteria on an active audience recompute it and
    forward only the difference; archiving is refused while outputs are connected.
    """
    allowed = {"name", "external_name", "description", "criteria", "status"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown field."]})
    clean_audience_fields(changes, audience_id=audience.pk)
    status = changes.get("status", audience.status)
    with transaction.atomic():
        audience = Audience.objects.select_for_update().get(pk=audience.pk)
        if "name" in changes and Audience.objects.filter(name=changes["name"].strip()).exclude(pk=audience.pk).exists():
            raise ValidationError({"name": [f"An audience named '{changes['name'].strip()}' already exists."]})
        if status == Audience.Status.ARCHIVED and audience.status != status and audience.connections.exists():
            raise ValidationError({"status": ["Disconnect this audience's outputs before archiving it."]})
        criteria_changed = "criteria" in changes and changes["criteria"] != audience.criteria
        status_changed = status != audience.status
        for name in ("name", "external_name", "description"):
            if name in changes:
                setattr(audience, name, (changes[name] or "").strip())
        if criteria_changed:
            audience.criteria = changes["criteria"]
            audience.depends_on_time = criteria_lang.depends_on_time(audience.criteria)
            audience.criteria_version += 1
        audience.status = status
        audience.save()
        if status_changed or (criteria_changed and status == Audience.Status.ACTIVE):
            # Activating computes the membership; deactivating empties it (members leave).
            if status_changed and status != Audience.Status.ACTIVE:
                audience.criteria_version += 1
                audience.save(update_fields=["criteria_version"])
            _schedule_recompute(audience)
    return audience
