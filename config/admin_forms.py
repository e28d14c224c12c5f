"""How the admin's forms show a service's errors.

The admin forms of this project are thin. Once their own fields are clean they hand the
values to a service, which validates them (against the partner's schema, name clashes, ...)
and writes, or raises a ValidationError keyed by field name and writes nothing. The call
happens during validation (`_post_clean`, where a ModelForm would run the model's own
validation) because that is the last moment the admin can still show errors on the fields;
a service error raised later, in ModelAdmin.save_model, could only be a server error.
"""

from __future__ import annotations

from collections.abc import Mapping

from django import forms
from django.core.exceptions import ValidationError


def add_service_errors(form: forms.BaseForm, exc: ValidationError, aliases: Mapping[str, str] | None = None) -> None:
    """Attach a service's ValidationError to a form: each key on the field of that name (or
    its alias), anything the form has no field for (e.g. "audience") above the fields."""
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    aliases = aliases or {}
    for key, errors in exc.error_dict.items():
        field = aliases.get(key, key)
        form.add_error(field if field in form.fields else None, errors)
