"""The REST API's one error shape, made by one exception handler (REST_FRAMEWORK["EXCEPTION_HANDLER"]).

Every error of /api/v1/ answers a JSON object:

    {"code": "invalid", "detail": "Invalid input.", "errors": {"identities[1].value": ["Enter a valid email address."]}}

* `code`: what went wrong, for programs (`invalid`, `parse_error`, `not_authenticated`,
  `authentication_failed`, `permission_denied`, `not_found`, `method_not_allowed`, `not_acceptable`,
  `conflict`, `profile_conflict`, `request_too_large`, `unsupported_media_type`, `throttled`, `server_error`);
* `detail`: one sentence for people;
* `errors`: for 400, every problem by the path of its field or query parameter (`criteria.and[1].operator`,
  `settings.list_id`, `status`, `ordering`, ...), each with its messages; `{}` for the others.

A 409 `profile_conflict` also carries `profile_ids`. The Events API (/v2/) keeps mParticle's shape.

Services raise django.core.exceptions.ValidationError with a dict {field_path: [messages]}; DRF
serializers and filters raise their own ValidationError with nested dicts and lists; both come out
flat, as above. A service (or view) refusing because of the state of other data raises a ConflictError
(e.g. audiences' ProfileConflict): a 409 in the same shape, with what its subclass adds.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, RequestDataTooBig
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views import defaults
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import exception_handler as drf_exception_handler
from rest_framework.views import set_rollback

from config.request_parsing import JsonParseError


def error_body(code: str, detail: str, errors: Mapping[str, list[str]] | None = None, **extra: Any) -> dict[str, Any]:
    return {"code": code, "detail": detail, "errors": dict(errors or {}), **extra}


class ConflictError(Exception):
    """A refusal because of the state of other data, not of the input (an identity held by another
    profile, an output still connected): answered 409. Subclasses set `code` and add what the client
    needs to resolve it to response_data()."""

    code = "conflict"

    def response_data(self) -> dict[str, Any]:
        return error_body(self.code, str(self))


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "The request body is too large."
    default_code = "request_too_large"


def django_error_detail(exc: DjangoValidationError) -> dict[str, list[str]]:
    """The service's {field: [messages]} dict; an error without fields goes under non_field_errors."""
    if hasattr(exc, "error_dict"):
        return {
            (api_settings.NON_FIELD_ERRORS_KEY if field == NON_FIELD_ERRORS else field): messages
            for field, messages in exc.message_dict.items()
        }
    return {api_settings.NON_FIELD_ERRORS_KEY: exc.messages}


def _join(prefix: str, key: Any) -> str:
    if isinstance(key, int):
        return f"{prefix}[{key}]"
    return f"{prefix}.{key}" if prefix else str(key)


def flat_errors(detail: Any, prefix: str = "") -> dict[str, list[str]]:
    """DRF's nested error detail as {path: [messages]}: {"settings": {"list_id": [..]}} becomes
    {"settings.list_id": [..]}, and a list's item errors `field[i]`."""
    if isinstance(detail, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in detail.items():
            # A ListField reports its items' errors under their index (an int): `field[i]`.
            flat.update(flat_errors(value, _join(prefix, key)))
        return flat
    if isinstance(detail, list | tuple):
        if all(not isinstance(item, Mapping | list | tuple) for item in detail):
            return {prefix or api_settings.NON_FIELD_ERRORS_KEY: [str(item) for item in detail]}
        flat = {}
        for index, item in enumerate(detail):
            if item:  # a ListSerializer reports {} for the items without errors
                flat.update(flat_errors(item, _join(prefix, index)))
        return flat
    return {prefix or api_settings.NON_FIELD_ERRORS_KEY: [str(detail)]}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, headers such as WWW-Authenticate and Retry-After, rollback), with
    Django's ValidationError as a 400, a ConflictError as a 409, and every body in the one shape."""
    if isinstance(exc, ConflictError):
        set_rollback()
        return Response(exc.response_data(), status=status.HTTP_409_CONFLICT)
    if isinstance(exc, DjangoValidationError):
        exc = serializers.ValidationError(django_error_detail(exc))
    elif isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):  # request.body over DATA_UPLOAD_MAX_MEMORY_SIZE
        exc = RequestTooLarge(f"The request body is larger than {settings.DATA_UPLOAD_MAX_MEMORY_SIZE} bytes.")
    response = drf_exception_handler(exc, context)
    if response is None or not isinstance(exc, exceptions.APIException):
        return response
    if isinstance(exc, exceptions.ValidationError):
        response.data = error_body("invalid", "Invalid input.", flat_errors(exc.detail))
    elif isinstance(exc, JsonParseError):  # the strict reader names where the body went wrong
        response.data = error_body("parse_error", str(exc.detail), {exc.path: [exc.message]})
    else:
        code = getattr(exc.detail, "code", None) or exc.default_code
        response.data = error_body(str(code), str(exc.detail))
    return response


def not_found_page(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    """handler404: the one shape for /api/ paths no route matches, Django's page elsewhere (the admin)."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("not_found", "Not found."), status=404)
    return defaults.page_not_found(request, exception)


def server_error_page(request: HttpRequest) -> HttpResponse:
    """handler500: the one shape for /api/ paths (no traceback, no data), Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(error_body("server_error", "Server error."), status=500)
    return defaults.server_error(request)


class ServiceErrorsMixin:
    """Kept so that code written against it still imports: exception_handler is now the default for
    every API view (REST_FRAMEWORK["EXCEPTION_HANDLER"]), so views need nothing."""

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
