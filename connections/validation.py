"""Checks of a new connection: its settings per the partner's schema, and whether the audience may be
connected to the output, and a bulk connection's upload criteria. Errors name their field ("list_id",
"audience", "output", "upload_messages")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

from audiences.models import Audience
from connections.models import UPLOAD_MESSAGES_MAX, UPLOAD_WAIT_MINUTES_MAX, Connection
from outputs.models import Output


def clean_connection_settings(*, output: Output, settings: Mapping[str, Any]) -> dict[str, Any]:
    """The connection settings, cleaned by the output's partner (e.g. Mailchimp's list id)."""
    return output.partner_class.clean_connection_settings(settings)


def check_connectable(*, audience: Audience, output: Output) -> None:
    """An archived audience cannot be connected, nor an audience connected twice to one output. Call it
    with the audience locked and read afresh, so the answer holds until the connection is written."""
    if audience.status == Audience.Status.ARCHIVED:
        raise ValidationError({"audience": [f"Audience '{audience.name}' is archived; it cannot be connected."]})
    if Connection.objects.filter(audience=audience, output=output).exists():
        raise ValidationError(
            {"output": [f"Audience '{audience.name}' is already connected to output '{output.name}'."]}
        )


UPLOAD_FIELDS = {
    "upload_wait_minutes": ("minutes", UPLOAD_WAIT_MINUTES_MAX),
    "upload_messages": ("messages", UPLOAD_MESSAGES_MAX),
}


def clean_upload_criteria(*, connection: Connection, values: Mapping[str, Any]) -> dict[str, int | None]:
    """A bulk connection's own upload criteria (`upload_wait_minutes`, `upload_messages`; None: the partner's
    default), checked: whole numbers from 1 to their cap, on a connection whose partner uploads in bulk.
    Errors name the field."""
    errors: dict[str, list[str]] = {}
    cleaned: dict[str, int | None] = {}
    partner = connection.output.partner_class
    for name, value in values.items():
        unit, maximum = UPLOAD_FIELDS[name]
        if partner.default_upload_criteria is None:
            errors[name] = [f"{partner.name} receives changes in real time: its connections have no upload criteria."]
        elif value is None:
            cleaned[name] = None
        elif isinstance(value, bool) or not isinstance(value, int):
            errors[name] = [f"Enter a whole number of {unit} (or nothing, for the partner's default)."]
        elif not 1 <= value <= maximum:
            errors[name] = [f"Enter a number of {unit} from 1 to {maximum:,}."]
        else:
            cleaned[name] = value
    if errors:
        raise ValidationError(errors)
    return cleaned
