"""Writes for audiences: create, update (activating, new criteria, archiving) and recompute."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError
from django.db import IntegrityError, models, transaction

from audiences import criteria as criteria_lang
from audiences.membership import recompute
from audiences.models import Audience


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


# --- audiences -------------------------------------------------------------------------------


def _schedule_recompute(audience: Audience) -> None:
    recompute.recompute_queue_after_commit(audience.pk, audience.criteria_version)


def _protected_by(audience: Audience) -> list[str]:
    """What keeps the audience from being deleted (rows pointing at it with on_delete=PROTECT, e.g. its
    connections), by name. Archiving empties the membership those rows rely on, so it is refused too."""
    names = []
    for relation in Audience._meta.related_objects:
        if (
            relation.on_delete is models.PROTECT
            and relation.related_model._default_manager.filter(**{relation.field.name: audience}).exists()
        ):
            names.append(str(relation.related_model._meta.verbose_name_plural))
    return names


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
    forward only the difference; archiving is refused while rows protect the audience (its connections).
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
        if status == Audience.Status.ARCHIVED and audience.status != status and (protected := _protected_by(audience)):
            raise ValidationError(
                {"status": [f"This audience has {', '.join(protected)}: remove them before archiving it."]}
            )
        criteria_changed = "criteria" in changes and changes["criteria"] != audience.criteria
        status_changed = status != audience.status
        for name in ("name", "external_name", "description"):
            if name in changes:
                setattr(audience, name, (changes[name] or "").strip())
        if criteria_changed:
            audience.criteria = changes["criteria"]
            audience.depends_on_time = criteria_lang.depends_on_time(audience.criteria)
            audience.criteria_version += 1
            # The failures recorded were the old criteria's: the new ones get a fresh start.
            audience.evaluation_error, audience.evaluation_failed_at = "", None
            recompute.clear_recompute_failure(audience)
        audience.status = status
        audience.save()
        if status_changed or (criteria_changed and status == Audience.Status.ACTIVE):
            # Activating computes the membership; deactivating empties it (members leave).
            if status_changed and status != Audience.Status.ACTIVE:
                audience.criteria_version += 1
                audience.save(update_fields=["criteria_version"])
            _schedule_recompute(audience)
    return audience


def audience_recompute(*, audience_id: int, criteria_version: int | None = None) -> dict[str, int]:
    """Recompute an audience's whole membership and apply only the difference (audiences.membership.recompute).

    A stale request (criteria changed since it was queued) is a no-op. Returns counts.
    """
    result = recompute.recompute_audience(audience_id, criteria_version=criteria_version)
    return {"entered": result.entered, "left": result.left, "skipped": int(result.skipped)}
