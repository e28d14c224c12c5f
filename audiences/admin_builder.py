"""The criteria builder of the audience admin: the widget (static/audiences/criteria_builder.js edits the same
JSON tree as the textarea, which stays there for experts), the builder's vocabulary as the page hands it to
the script, and the two JSON views it calls: the names seen in the data and the live estimate.

The operators, their kinds of value, the windows and the defaults come from criteria/vocabulary.py; only
the words a marketer reads are declared here (a test checks that every operator has its words).
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib.admin import ModelAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, json_script
from django.views.decorators.http import require_GET, require_POST

from audiences.criteria import vocabulary
from audiences.estimates import criteria_estimate, names_seen
from audiences.identities import IDENTITY_TYPE_CHOICES
from audiences.models import Audience
from config.roles import BUILD_AUDIENCES, holds

# What a marketer reads for each operator, in the order the builder offers them.
OPERATOR_LABELS = {
    "equals": "is",
    "not_equals": "is not",
    "contains": "contains",
    "not_contains": "does not contain",
    "matches": "matches the pattern",
    "not_matches": "does not match the pattern",
    "exists": "is set",
    "not_exists": "is not set",
    "greater_than": "is more than",
    "greater_or_equal": "is at least",
    "less_than": "is less than",
    "less_or_equal": "is at most",
    "between": "is between",
    "includes": "list includes",
    "not_includes": "list does not include",
    "partial_match": "list has an item containing",
    "date_before": "is a date before",
    "date_after": "is a date on or after",
    "date_on": "is the date",
    "date_between": "is a date between",
    "within_last": "is a date within the last",
}
IDENTITY_OPERATOR_LABELS = {
    "exists": "is known",
    "not_exists": "is not known",
    "matches": "matches the pattern",
    "not_matches": "does not match the pattern",
}
FREQUENCY_LABELS = {"at_least": "at least", "more_than": "more than", "fewer_than": "fewer than"}
AUDIENCE_OPERATOR_LABELS = {"member": "is in the audience", "not_member": "is not in the audience"}
UNIT_LABELS = {"days": "days", "hours": "hours"}


def value_kind(operator: str) -> str:
    """Which input an attribute operator's value needs, read from the vocabulary's sets."""
    if operator in vocabulary.PRESENCE_OPERATORS:
        return "none"
    if operator in vocabulary.SCALAR_OPERATORS:
        return "scalar"  # text, number or yes/no
    if operator in vocabulary.STRING_OPERATORS:
        return "text"
    if operator in vocabulary.NUMBER_OPERATORS:
        return "number"
    if operator == "between":
        return "number_range"
    if operator == "date_on":
        return "day"
    if operator in vocabulary.DATE_OPERATORS:
        return "date"
    if operator == "date_between":
        return "date_range"
    if operator == "within_last":
        return "window"
    raise ValueError(f"no value kind for operator {operator!r}")


def builder_vocabulary(*, audience_id: int | None) -> dict[str, Any]:
    """Everything the script needs to draw and check rows, from the one vocabulary."""
    ordered = [op for op in OPERATOR_LABELS if op in vocabulary.OPERATORS]
    return {
        "operators": [{"value": op, "label": OPERATOR_LABELS[op], "kind": value_kind(op)} for op in ordered],
        "identity_operators": [
            {
                "value": op,
                "label": IDENTITY_OPERATOR_LABELS[op],
                "kind": "none" if op in ("exists", "not_exists") else "text",
            }
            for op in IDENTITY_OPERATOR_LABELS
            if op in vocabulary.IDENTITY_OPERATORS
        ],
        "frequency_operators": [
            {"value": op, "label": FREQUENCY_LABELS[op]}
            for op in FREQUENCY_LABELS
            if op in vocabulary.FREQUENCY_OPERATORS
        ],
        "audience_operators": [
            {"value": op, "label": AUDIENCE_OPERATOR_LABELS[op]}
            for op in AUDIENCE_OPERATOR_LABELS
            if op in vocabulary.AUDIENCE_OPERATORS
        ],
        "units": [{"value": unit, "label": UNIT_LABELS.get(unit, unit)} for unit in vocabulary.WINDOW_UNITS],
        "identity_types": [{"value": value, "label": str(label)} for value, label in IDENTITY_TYPE_CHOICES],
        "default_frequency": vocabulary.DEFAULT_FREQUENCY,
        "default_recency": vocabulary.DEFAULT_RECENCY,
        "audiences": [
            {"id": pk, "name": name}
            for pk, name in Audience.objects.exclude(pk=audience_id).order_by("name").values_list("pk", "name")
        ],
        "audience_id": audience_id,
        "names_url": reverse("admin:audiences_audience_names"),
        "estimate_url": reverse("admin:audiences_audience_estimate"),
    }


CRITERIA_HELP = format_html(
    "Build the audience from conditions: <strong>All of</strong> (every condition must hold), "
    "<strong>Any of</strong> (at least one), <strong>None of</strong> (excluded). "
    "Names are offered from the data received; a name never seen is flagged, as it would give an empty "
    "audience. For example, the tutorial's <em>Potential Parisians</em>: all of “Destination Intro” "
    "happened at least once in the last 30 days with city is Paris, and status is Premium. "
    "Text matching ignores upper and lower case. “Edit as JSON” shows the same audience as text, for "
    "experts (the language is described in {}).",
    "docs/criteria.md",
)


class CriteriaBuilderWidget(forms.Textarea):
    """The JSON textarea, plus the builder drawn over it by the script."""

    template_name = "audiences/criteria_builder_widget.html"

    class Media:
        css = {"all": ("audiences/criteria_builder.css",)}
        js = ("audiences/criteria_builder.js",)

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(attrs={"rows": 12, "cols": 80, "class": "vLargeTextField criteria-json", **(attrs or {})})
        self.audience_id: int | None = None

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        context["builder_config"] = json_script(
            builder_vocabulary(audience_id=self.audience_id), f"{context['widget']['attrs']['id']}-builder-config"
        )
        return context


class CriteriaBuilderAdminMixin:
    """The builder's JSON views, under the audience admin: names seen and the live estimate."""

    def get_urls(self: Any) -> list[URLPattern]:
        own = [
            path("names/", self.admin_site.admin_view(require_GET(self.names_view)), name="audiences_audience_names"),
            path(
                "estimate/",
                self.admin_site.admin_view(require_POST(self.estimate_view)),
                name="audiences_audience_estimate",
            ),
        ]
        # Before the default URLs: "<path:object_id>/" would swallow them.
        return [*own, *super().get_urls()]

    def _check_builder_permission(self: Any, request: HttpRequest) -> None:
        """The builder serves who may create or change audiences, as the REST API's estimate and names."""
        if not holds(request.user, BUILD_AUDIENCES):
            raise PermissionDenied

    def names_view(self: ModelAdmin, request: HttpRequest) -> HttpResponse:
        """GET ?event=<name>: attribute and event names seen, with counts (and that event's attribute names)."""
        self._check_builder_permission(request)
        return JsonResponse(names_seen(event=request.GET.get("event")).as_dict())

    def estimate_view(self: ModelAdmin, request: HttpRequest) -> HttpResponse:
        """POST {"criteria": tree, "audience_id": id or null}: the count, without saving; 400 with the
        criteria's error (its path in the tree) when the tree is not valid."""
        self._check_builder_permission(request)
        try:
            body = json.loads(request.body or b"{}")
        except (ValueError, UnicodeDecodeError):
            return JsonResponse({"errors": {"body": ["Expected a JSON object."]}}, status=400)
        if not isinstance(body, dict) or "criteria" not in body:
            return JsonResponse({"errors": {"criteria": ["This field is required."]}}, status=400)
        audience_id = body.get("audience_id")
        if audience_id is not None and (not isinstance(audience_id, int) or isinstance(audience_id, bool)):
            return JsonResponse({"errors": {"audience_id": ["Expected an audience id or null."]}}, status=400)
        try:
            estimate = criteria_estimate(criteria=body["criteria"], audience_id=audience_id)
        except ValidationError as exc:
            return JsonResponse({"errors": {"criteria": exc.messages}}, status=400)
        return JsonResponse(estimate.as_dict())
