"""How every list of the REST API reads its query: filters, ordering, search, pagination.

Settings name this module (pagination, filter backends), and DRF resolves them while it defines its
generic views: so nothing here may import rest_framework.generics or rest_framework.views (a circle).

The backends run in the order REST_FRAMEWORK["DEFAULT_FILTER_BACKENDS"] gives: known parameters,
django-filter (an invalid value is a 400 naming the parameter), search, ordering.
Nothing is silently ignored: an unknown query parameter, a filter value that is not valid
(an unknown status, an audience id that does not exist, a date that is not one) or an ordering
by a field the list does not offer answers 400 naming the parameter. Pages are capped.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django import forms
from django.db.models import QuerySet
from django_filters.fields import IsoDateTimeField
from django_filters.filters import IsoDateTimeFilter
from rest_framework import filters, serializers
from rest_framework.pagination import LimitOffsetPagination
from rest_framework.request import Request

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# PostgreSQL's OFFSET is a bigint; past it the database would fail instead of answering an empty page.
MAX_OFFSET = 2**63 - 1
# Parameters every list understands besides its filters: DRF's format switch (?format=json).
ALWAYS_KNOWN = frozenset({"format"})


class UtcDateTimeField(IsoDateTimeField):
    """An ISO 8601 date and time, turned into UTC: PostgreSQL refuses UTC offsets past ±15:59, and a
    time near year 1 or 9999 may not exist in UTC."""

    def to_python(self, value: Any) -> datetime | None:
        moment = super().to_python(value)
        if moment is None:
            return None
        try:
            return moment.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("Give a date and time between the years 1 and 9999 (UTC).") from None


class UtcDateTimeFilter(IsoDateTimeFilter):
    """?at_after=2026-11-29T12:00:00+01:00, compared in UTC."""

    field_class = UtcDateTimeField


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    # ASCII digits only: int() would also take "٣", "1_000" and " 7".
    value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= len(str(maximum)) else None
    if value is None or not minimum <= value <= maximum:
        raise serializers.ValidationError({name: [f"Give a whole number from {minimum} to {maximum}."]})
    return value


class CappedLimitOffsetPagination(LimitOffsetPagination):
    """?limit= (default 100, at most 1000: a larger one is capped) and ?offset=."""

    default_limit = DEFAULT_LIMIT
    max_limit = MAX_LIMIT

    def get_limit(self, request: Request) -> int:
        limit = query_int(request, self.limit_query_param, default=DEFAULT_LIMIT, minimum=1, maximum=MAX_OFFSET)
        return min(limit, MAX_LIMIT)

    def get_offset(self, request: Request) -> int:
        return query_int(request, self.offset_query_param, default=0, minimum=0, maximum=MAX_OFFSET)

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        # DRF writes OpenAPI 3.0's `nullable`; the schema is 3.1, where null is a type.
        link = {"type": ["string", "null"], "format": "uri"}
        return {
            "type": "object",
            "required": ["count", "next", "previous", "results"],
            "properties": {
                "count": {"type": "integer", "description": "Items in the whole list."},
                "next": {**link, "description": "The next page, or null."},
                "previous": {**link, "description": "The previous page, or null."},
                "results": schema,
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            if parameter["name"] == self.limit_query_param:
                parameter["description"] = f"Items per page: {DEFAULT_LIMIT} by default, at most {MAX_LIMIT}."
                parameter["schema"].update({"minimum": 1, "default": DEFAULT_LIMIT})
            else:
                parameter["schema"].update({"minimum": 0, "default": 0})
        return parameters


class StrictOrderingFilter(filters.OrderingFilter):
    """?ordering=name,-created_at over the view's `ordering_fields`; an unknown field is a 400.
    A tie is broken by id, so pages never overlap."""

    def get_ordering(self, request: Request, queryset: QuerySet, view: Any) -> list[str] | None:
        raw = request.query_params.get(self.ordering_param)
        if raw is None:
            return self.get_default_ordering(view)
        allowed = {name for name, _ in self.get_valid_fields(queryset, view, {"request": request})}
        fields = [part.strip() for part in raw.split(",") if part.strip()]
        unknown = [field for field in fields if field.lstrip("-") not in allowed]
        if not fields or unknown:
            raise serializers.ValidationError(
                {self.ordering_param: [f"Order by one or more of: {', '.join(sorted(allowed))} (prefix - to reverse)."]}
            )
        if not {"id", "-id", "pk", "-pk"} & set(fields):
            fields.append("id")
        return fields

    def get_valid_fields(self, queryset: QuerySet, view: Any, context: dict | None = None) -> list[tuple[str, str]]:
        # Only what the view offers: DRF would otherwise fall back to every serializer field.
        return [(name, name) for name in getattr(view, "ordering_fields", None) or ()]

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        if not getattr(view, "ordering_fields", None):
            return []
        choices = ", ".join(view.ordering_fields)
        return [
            {
                "name": self.ordering_param,
                "required": False,
                "in": "query",
                "description": f"Comma-separated fields to order by, `-` to reverse: {choices}.",
                "schema": {"type": "string"},
            }
        ]


class SearchFilter(filters.SearchFilter):
    """?search=words over the view's `search_fields` (case-insensitive, every word must match)."""

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        if not getattr(view, "search_fields", None):
            return []
        return super().get_schema_operation_parameters(view)


def known_parameters(request: Request, view: Any) -> set[str]:
    """The query parameters this list understands."""
    known = set(ALWAYS_KNOWN)
    paginator = getattr(view, "paginator", None)
    if paginator is not None:
        known |= {paginator.limit_query_param, paginator.offset_query_param}
    filterset_class = getattr(view, "filterset_class", None)
    if filterset_class is not None:
        known |= set(filterset_class.base_filters)
    if getattr(view, "ordering_fields", None):
        known.add(StrictOrderingFilter.ordering_param)
    if getattr(view, "search_fields", None):
        known.add(SearchFilter.search_param)
    return known


class KnownQueryParameters(filters.BaseFilterBackend):
    """First of the filter backends: a parameter the list does not know (a typo such as ?stauts=)
    is a 400 naming it, not a filter silently skipped."""

    def filter_queryset(self, request: Request, queryset: QuerySet, view: Any) -> QuerySet:
        unknown = sorted(set(request.query_params) - known_parameters(request, view))
        if unknown:
            raise serializers.ValidationError({name: ["Unknown query parameter."] for name in unknown})
        return queryset
