"""The OpenAPI 3.1 description of the service, made by drf-spectacular (/api/v1/schema/, /api/v1/docs/).

* AutoSchema adds the error answers every operation can give, in the one error shape
  (config/api_errors.py): 401 and 403 everywhere, 404 on an object's URL, 400 for every POST, PUT
  and PATCH and every paginated list, 413 and 415 where there is a request body. Views declare the rest
  (a 409, a 202, a ZIP) with extend_schema.
* The Events API (/v2/), which is not REST framework, is added by audiences' postprocessing hook
  (audiences/events_api/openapi.py, named in SPECTACULAR_SETTINGS): config imports no app.
"""

from __future__ import annotations

from typing import Any

from drf_spectacular.openapi import AutoSchema as SpectacularAutoSchema
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers

ERROR_DESCRIPTIONS = {
    "400": "Invalid input: `errors` names every field or query parameter at fault.",
    "401": "No valid token (`Authorization: Token <key>`).",
    "403": "The user lacks a permission this endpoint needs (see the README's roles).",
    "404": "No such object.",
    "409": "The request conflicts with the current state.",
    "413": "The request body is larger than the limit.",
    "415": "The request body is not JSON.",
}


class ErrorSerializer(serializers.Serializer):
    """The one error shape of the REST API."""

    code = serializers.CharField(help_text="What went wrong, for programs (invalid, not_found, ...).")
    detail = serializers.CharField(help_text="One sentence for people.")
    errors = serializers.DictField(
        child=serializers.ListField(child=serializers.CharField()),
        help_text="For 400: messages by field path or query parameter; empty otherwise.",
    )


class ProfileConflictSerializer(ErrorSerializer):
    profile_ids = serializers.ListField(
        child=serializers.IntegerField(), help_text="The profiles the identities belong to."
    )


def error_response(status: str, description: str | None = None) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description or ERROR_DESCRIPTIONS[status])


class AutoSchema(SpectacularAutoSchema):
    def _has_request_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH") and self.get_request_serializer() is not None

    def _error_statuses(self) -> list[str]:
        statuses = ["401", "403"]
        if "{" in self.path:
            statuses.append("404")
        # A body to check, or a list's query (filters, ordering, pages). Other 400s are declared by the view.
        if self.method in ("POST", "PUT", "PATCH") or (self._is_list_view() and self._get_paginator()):
            statuses.append("400")
        if self._has_request_body():
            statuses += ["413", "415"]
        return statuses

    def _get_response_bodies(self, direction: str = "response") -> dict[str, Any]:
        responses = super()._get_response_bodies(direction)
        if direction != "response":
            return responses
        for status in self._error_statuses():
            if status not in responses:
                responses[status] = self._get_response_for_code(error_response(status), status, direction=direction)
        return dict(sorted(responses.items()))
