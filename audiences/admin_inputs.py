"""Inputs in the admin: create one (its secret is shown once, in a message), rename, deactivate."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.http import HttpRequest

from audiences.inputs import input_create
from audiences.merge import conflict_resolve
from audiences.models import IdentityConflict, Input
from config.display import when
from config.roles import MERGE_PROFILE


class InputForm(forms.ModelForm):
    class Meta:
        model = Input
        fields = ["name", "is_active"]


@admin.register(Input)
class InputAdmin(admin.ModelAdmin):
    form = InputForm
    list_display = ("name", "key", "is_active", "created_at", "last_used_at")
    list_filter = ("is_active",)
    search_fields = ("name", "=key")

    def get_readonly_fields(self, request: HttpRequest, obj: Input | None = None) -> tuple[str, ...]:
        # The key is made on creation; the secret is never shown after it.
        return ("key", "created_at", "last_used_at") if obj else ()

    def save_model(self, request: HttpRequest, obj: Input, form: Any, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        created, secret = input_create(obj.name)
        if not obj.is_active:
            Input.objects.filter(pk=created.pk).update(is_active=False)
            created.is_active = False
        obj.__dict__.update({f.attname: getattr(created, f.attname) for f in Input._meta.concrete_fields})
        obj._state.adding = False
        messages.warning(
            request,
            f"Input '{created.name}': key {created.key}, secret {secret}. "
            "Copy the secret now: it is stored hashed and will not be shown again.",
        )


@admin.register(IdentityConflict)
class IdentityConflictAdmin(admin.ModelAdmin):
    """Batches whose identities pointed to several profiles: what the resolution rule decided."""

    list_display = ("at", "input", "source_request_id", "chosen_profile", "rule", "resolution")
    list_filter = ("input",)
    actions = ("merge_profiles",)
    search_fields = ("source_request_id",)
    readonly_fields = (
        "at",
        "input",
        "source_request_id",
        "identities",
        "profile_ids",
        "chosen_profile",
        "not_attached",
        "rule",
        "resolved_at",
        "resolution",
    )

    @admin.action(description="Merge the profiles of the selected conflicts", permissions=["merge"])
    def merge_profiles(self, request, queryset) -> None:
        """Each conflict's profiles merged into the one its rule chose (audiences/merge.py)."""
        for conflict in queryset.order_by("at"):
            results = conflict_resolve(conflict=conflict)
            conflict.refresh_from_db()
            messages.success(request, f"Conflict of {when(conflict.at)}: {conflict.resolution}.")
            for result in results:
                if result.entered or result.left:
                    messages.info(
                        request,
                        f"Profile {result.profile_id}: entered {len(result.entered)} and left {len(result.left)} "
                        "audiences; partners are updated.",
                    )

    def has_merge_permission(self, request) -> bool:
        return request.user.has_perm(MERGE_PROFILE)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
