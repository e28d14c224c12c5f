"""Admin form of the "Connect output" flow: the chosen output's connection settings.

Like the output forms (see config/admin_forms.py), it hands its clean values to the service,
connection_create, while validating, so the service's errors land on the fields.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from audiences.models import Audience
from connections.models import Connection
from forwarding.lifecycle import connection_create
from outputs.forms import add_service_errors, settings_fields
from outputs.models import Output


class ConnectSettingsForm(forms.Form):
    """The partner's connection settings (for Mailchimp: the Audience ID, i.e. the list id)."""

    def __init__(self, *args: Any, audience: Audience, output: Output, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audience = audience
        self.output = output
        self.connection: Connection | None = None
        self.fields.update(settings_fields(output.partner_class.connection_settings))

    def _post_clean(self) -> None:
        # The service validates and writes; errors on "audience" / "output" show above the fields.
        if self.errors:
            return
        try:
            self.connection = connection_create(
                audience=self.audience, output=self.output, settings=dict(self.cleaned_data)
            )
        except ValidationError as exc:
            add_service_errors(self, exc)
