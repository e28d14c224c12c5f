"""How the API reports errors raised by the services.

Services raise django.core.exceptions.ValidationError with a dict {field_path: [messages]}
(e.g. "identities[1].value", "criteria", "api_key"). DRF does not know that exception (it
would be a 500), so it is turned into a DRF 400 whose body is the same dict: every error
names its field. A ConflictError (e.g. audiences' ProfileConflict) becomes a 409 with its response data.

Views opt in with ServiceErrorsMixin, so settings need not change. To apply the handler to
every DRF view instead, add to REST_FRAMEWORK in config/settings.py:
    "EXCEPTION_HANDLER": "config.api_errors.exception_handler",
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.core.exceptions import NON_FIELD_ERRORS
from django.core.exceptions import ValidationError as DjangoValidationError
from rest_framework import serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback


class ConflictError(Exception):
    """A service's refusal because of the state of other data (not of the input): answered 409.
    Subclasses add what the client needs to resolve it to response_data()."""

    def response_data(self) -> dict[str, Any]:
        return {"detail": str(self)}


def django_error_detail(exc: DjangoValidationError) -> dict[str, list[str]]:
    """The service's {field: [messages]} dict; an error without fields goes under non_field_errors."""
    if hasattr(exc, "error_dict"):
        return {
            (api_settings.NON_FIELD_ERRORS_KEY if field == NON_FIELD_ERRORS else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {api_settings.NON_FIELD_ERRORS_KEY: exc.messages}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus Django's ValidationError (-> 400) and ConflictError (-> 409)."""
    if isinstance(exc, ConflictError):
        set_rollback()
        return Response(exc.response_data(), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        exc = serializers.ValidationError(django_error_detail(exc))
    return drf_exception_handler(exc, context)


class ServiceErrorsMixin:
    """For API views that call services: use exception_handler whatever the settings say."""

    def get_exception_handler(self) -> Callable[[Exception, dict[str, Any]], Response | None]:
        return exception_handler


class RejectUnknownFieldsMixin:
    """For request serializers: a misspelt key is an error, not silently ignored.

    Read-only fields are still accepted (and ignored), so a client may send back what it read.
    """

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(set(data) - set(self.fields))  # type: ignore[attr-defined]
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().to_internal_value(data)  # type: ignore[misc]
