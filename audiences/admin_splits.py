"""The audience page's "Split into variations": a form of percentages, then the variations
(audiences/splits.py), each an audience of its own. Needs audiences.add_audience."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse

from audiences.criteria.buckets import MAX_VARIATIONS
from audiences.models import Audience
from audiences.splits import audience_split, parse_percentages
from config.admin_forms import add_service_errors

SPLIT_PERMISSION = "audiences.add_audience"


class SplitForm(forms.Form):
    percentages = forms.CharField(
        initial="50, 50",
        help_text=f"One whole percentage per variation (up to {MAX_VARIATIONS}), separated by commas: “50, 50” "
        "for an A/B test, “10” for a 10% sample. They add up to at most 100; the rest is in no variation.",
    )

    def __init__(self, *args: Any, audience: Audience, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.audience = audience
        self.variations: list[Audience] = []

    def _post_clean(self) -> None:
        if self.errors:
            return
        try:
            percentages = parse_percentages(self.cleaned_data["percentages"])
            self.variations = audience_split(audience=self.audience, percentages=percentages)
        except ValidationError as exc:
            add_service_errors(self, exc)


class SplitAdminMixin:
    """For AudienceAdmin: the split page's URL, view and button."""

    def get_urls(self) -> list[URLPattern]:
        split = path(
            "<path:object_id>/split/",
            self.admin_site.admin_view(self.split_view),
            name="audiences_audience_split",
        )
        return [split, *super().get_urls()]

    def split_context(self, request: HttpRequest, audience: Audience) -> dict[str, Any]:
        if request.user.has_perm(SPLIT_PERMISSION) and audience.status != Audience.Status.ARCHIVED:
            return {"split_url": reverse("admin:audiences_audience_split", args=[audience.pk])}
        return {}

    def split_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        audience = self.audience_for_page(request, object_id, permission=SPLIT_PERMISSION)
        form = SplitForm(request.POST if request.method == "POST" else None, audience=audience)
        if request.method == "POST" and form.is_valid():
            names = ", ".join(f"“{v.name}”" for v in form.variations)
            messages.success(request, f"Created {len(form.variations)} variations: {names}.")
            return redirect(f"{reverse('admin:audiences_audience_changelist')}?q={audience.name[:80]}")
        context = {
            **self.audience_page_context(request, audience, f"Split “{audience}” into variations"),
            "form": form,
        }
        return TemplateResponse(request, "admin/audiences/audience/split.html", context)
