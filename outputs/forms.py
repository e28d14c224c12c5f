"""Admin forms for outputs: fields built from a partner's settings schema. Like every admin form of
this project they are thin, handing their values to a service while they validate (config/admin_forms.py).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ImproperlyConfigured, ValidationError

from config.admin_forms import add_service_errors
from outputs.models import Output
from outputs.partners.base import Partner, Setting, SettingKind
from outputs.services import output_create, output_update

SECRET_STORED_HELP = "A value is stored. Leave blank to keep it; type a new one to replace it."
SECRET_UNSET_HELP = "Not set."


def setting_field(setting: Setting) -> forms.Field:
    """The form field for one partner setting (configuration or connection)."""
    # Blank is allowed wherever the schema fills in a default, so the form never refuses
    # what the partner's clean() would accept.
    required = setting.required and setting.default is None
    common: dict[str, Any] = {"label": setting.label, "help_text": setting.help_text, "required": required}
    if setting.default is not None:
        common["initial"] = setting.default
    if setting.kind is SettingKind.SECRET:
        # Write-only: never rendered back, not even after a failed submit.
        return forms.CharField(
            max_length=setting.max_length,
            widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
            **common,
        )
    if setting.kind is SettingKind.BOOLEAN:
        # An unticked box is a real False, not "missing": never required.
        return forms.BooleanField(**{**common, "required": False})
    if setting.kind is SettingKind.INTEGER:
        return forms.IntegerField(**common)
    if setting.kind is SettingKind.CHOICE:
        choices = list(setting.choices)
        if not required and setting.default is None:
            choices.insert(0, ("", "---------"))
        return forms.ChoiceField(choices=choices, **common)
    return forms.CharField(max_length=setting.max_length, **common)


def settings_fields(schema: tuple[Setting, ...], *, reserved: frozenset[str] = frozenset()) -> dict[str, forms.Field]:
    """Form fields named after the settings; `reserved` are the form's own field names."""
    clash = reserved & {s.name for s in schema}
    if clash:
        # Field names are the setting names so that the service's errors land on them as is.
        raise ImproperlyConfigured(f"Partner setting names {sorted(clash)} clash with the admin form's own fields.")
    return {setting.name: setting_field(setting) for setting in schema}


class OutputForm(forms.ModelForm):
    """Name and the partner's configuration settings; saved by output_create / output_update.

    Built per partner by output_form_for(); the partner never changes after creation.
    """

    partner: type[Partner]

    class Meta:
        model = Output
        fields = ["name"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        adding = self.instance.pk is None
        if adding:
            # Shown read-only on the add page, and what output_create is told.
            self.instance.partner_key = self.partner.key
            return
        stored_secrets = set(self.instance.secret_names_set())
        for setting in self.partner.configuration_settings:
            field = self.fields[setting.name]
            if setting.is_secret:
                # Blank keeps the stored secret (output_update fills it in).
                field.required = False
                state = SECRET_STORED_HELP if setting.name in stored_secrets else SECRET_UNSET_HELP
                field.help_text = f"{setting.help_text} {state}".strip()
            elif setting.name in self.instance.settings:
                self.initial.setdefault(setting.name, self.instance.settings[setting.name])

    def settings_values(self) -> dict[str, Any]:
        return {setting.name: self.cleaned_data.get(setting.name) for setting in self.partner.configuration_settings}

    def _post_clean(self) -> None:
        # Replaces the model validation: the service validates and writes (module docstring).
        if self.errors:
            return
        try:
            if self.instance.pk is None:
                self.instance = output_create(
                    name=self.cleaned_data["name"], partner_key=self.partner.key, settings=self.settings_values()
                )
            else:
                self.instance = output_update(
                    output=self.instance, name=self.cleaned_data["name"], settings=self.settings_values()
                )
        except ValidationError as exc:
            add_service_errors(self, exc)


def output_form_for(partner: type[Partner]) -> type[OutputForm]:
    """An OutputForm class with the partner's configuration settings declared as fields
    (declared, so the ModelAdmin's modelform_factory accepts them in its fieldsets)."""
    attrs: dict[str, Any] = settings_fields(partner.configuration_settings, reserved=frozenset({"name"}))
    attrs["partner"] = partner
    return type(f"{partner.__name__}OutputForm", (OutputForm,), attrs)
