"""Checks of a new connection: its settings per the partner's schema, and whether the audience may be
connected to the output. Errors name their field ("list_id", "audience", "output")."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError

from audiences.models import Audience
from connections.models import Connection
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
