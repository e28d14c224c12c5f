"""Admin form of the "Connect output" flow: the chosen output's connection settings, with the guided steps.

Where the partner can list its lists or audiences (Mailchimp's GET /lists), the setting naming one is a
choice among them instead of a typed id. The form does one of three things, as the page's buttons ask:
test the settings with the partner, preview the first send (a dry run), or connect; connecting tests first
and refuses what the partner refuses, and a draft audience is connected only once that is confirmed.
Like the output forms (see config/admin_forms.py), it hands its clean values to the services while
validating, so their errors land on the fields.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from audiences.models import Audience
from connections.models import UPLOAD_MESSAGES_MAX, UPLOAD_WAIT_MINUTES_MAX, Connection
from connections.validation import check_connectable, clean_connection_settings
from forwarding.bulk import connection_set_upload_criteria
from forwarding.lifecycle import connection_create
from forwarding.preview import ConnectionPreview, connection_preview, connection_settings_test
from outputs.forms import add_service_errors, settings_fields
from outputs.models import Output
from outputs.partners.base import Destination
from outputs.partners.http import PartnerError

TEST, PREVIEW, CONNECT = "test", "preview", "connect"


class ConnectSettingsForm(forms.Form):
    """The partner's connection settings (for Mailchimp: which list), and what to do with them."""

    def __init__(self, *args: Any, audience: Audience, output: Output, action: str = CONNECT, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audience = audience
        self.output = output
        self.action = action
        self.connection: Connection | None = None
        self.preview: ConnectionPreview | None = None
        self.test_result: tuple[bool, str] | None = None
        self.destinations: list[Destination] = []
        self.destinations_error = ""
        partner = output.partner_class
        self.setting_names = [s.name for s in partner.connection_settings]
        self.fields.update(settings_fields(partner.connection_settings, reserved=frozenset({"confirm_draft"})))
        if partner.destination_setting in self.fields:
            self._offer_destinations(partner.destination_setting)
        if audience.status == Audience.Status.DRAFT:
            self.fields["confirm_draft"] = forms.BooleanField(
                required=False,
                label="Connect this draft audience",
                help_text="A draft has no members: nothing is sent until the audience is made active.",
            )

    def _offer_destinations(self, name: str) -> None:
        """The partner's lists as a choice; if they cannot be listed, the typed id stays, with the reason."""
        try:
            self.destinations = self.output.partner().list_destinations()
        except (PartnerError, ValidationError) as exc:
            reason = exc.message if isinstance(exc, PartnerError) else " ".join(exc.messages)
            self.destinations_error = f"The lists could not be read from {self.output.partner_class.name}: {reason}"
            return
        if not self.destinations:
            self.destinations_error = f"{self.output.partner_class.name} lists no list for this account."
            return
        typed = self.fields[name]
        self.fields[name] = forms.ChoiceField(
            label=typed.label,
            help_text=f"The lists of this {self.output.partner_class.name} account.",
            choices=[("", "Choose a list…")]
            + [
                (d.id, f"{d.name} ({d.members:,} subscribed) — id {d.id}" if d.members is not None else d.name)
                for d in self.destinations
            ],
        )

    def settings_values(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in self.setting_names}

    def _post_clean(self) -> None:
        # The services validate; their errors show on the fields ("audience" / "output" above them).
        if self.errors:
            return
        try:
            settings = clean_connection_settings(output=self.output, settings=self.settings_values())
            if self.action == TEST:
                self.test_result = connection_settings_test(
                    output=self.output, settings=settings, audience=self.audience
                )
            elif self.action == PREVIEW:
                self.preview = connection_preview(audience=self.audience, output=self.output, settings=settings)
            else:
                self._connect(settings)
        except ValidationError as exc:
            add_service_errors(self, exc)

    def _connect(self, settings: dict[str, Any]) -> None:
        if "confirm_draft" in self.fields and not self.cleaned_data.get("confirm_draft"):
            raise ValidationError(
                {
                    "confirm_draft": [
                        "This audience is a draft: tick the box to connect it anyway, or activate it first."
                    ]
                }
            )
        check_connectable(audience=self.audience, output=self.output)  # before asking the partner anything
        ok, message = connection_settings_test(output=self.output, settings=settings, audience=self.audience)
        if not ok:
            field = self.output.partner_class.destination_setting or None
            raise ValidationError({field: [f"{message} Nothing was saved."]} if field else [message])
        self.connection = connection_create(audience=self.audience, output=self.output, settings=settings)


class UploadCriteriaForm(forms.Form):
    """A bulk connection's own upload criteria (forwarding/bulk.py); a field left empty takes the partner's
    default. Saved by the service while validating, so its errors land on the fields."""

    upload_wait_minutes = forms.IntegerField(
        required=False, min_value=1, max_value=UPLOAD_WAIT_MINUTES_MAX, label="Wait (minutes)"
    )
    upload_messages = forms.IntegerField(required=False, min_value=1, max_value=UPLOAD_MESSAGES_MAX, label="Messages")

    def __init__(self, *args: Any, connection: Connection, **kwargs: Any) -> None:
        kwargs.setdefault(
            "initial",
            {"upload_wait_minutes": connection.upload_wait_minutes, "upload_messages": connection.upload_messages},
        )
        super().__init__(*args, **kwargs)
        self.connection = connection
        partner = connection.output.partner_class
        default = partner.default_upload_criteria
        if default is not None:
            minutes = int(default.wait.total_seconds() // 60)
            self.fields["upload_wait_minutes"].help_text = (
                f"Upload once the oldest waiting change has waited this long. Empty: {partner.name}'s default, "
                f"{minutes:,} minutes."
            )
            self.fields[
                "upload_messages"
            ].help_text = f"Upload as soon as this many changes wait. Empty: the default, {default.messages:,}."

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        try:
            self.connection = connection_set_upload_criteria(connection=self.connection, values=self.cleaned_data)
        except ValidationError as exc:
            add_service_errors(self, exc)


class EditSettingsForm(forms.Form):
    """A connection's settings, as edited in the admin: shown with their current values; what saving them does
    is said by forwarding.lifecycle.connection_settings_preview before the edit is confirmed."""

    def __init__(self, *args: Any, connection: Connection, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connection = connection
        schema = connection.output.partner_class.connection_settings
        self.fields.update(settings_fields(schema))
        for setting in schema:
            self.fields[setting.name].initial = connection.settings.get(setting.name)

    def settings_values(self) -> dict[str, Any]:
        return {name: self.cleaned_data.get(name) for name in self.fields}
