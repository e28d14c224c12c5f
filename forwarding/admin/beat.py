"""django-celery-beat's models (periodic tasks, schedules) in the admin: for superusers only.

The periodic tasks are defined in code (CELERY_BEAT_SCHEDULE in config/settings.py); an edit in the admin
would change what the sweeper and the recomputes do, so the models are hidden from everyone else, menu
included."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest


def _superusers_only(model_admin: type[admin.ModelAdmin]) -> type[admin.ModelAdmin]:
    class SuperusersOnly(model_admin):  # type: ignore[valid-type, misc]
        def has_module_permission(self, request: HttpRequest) -> bool:
            return request.user.is_superuser

        def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
            return request.user.is_superuser

        def has_add_permission(self, request: HttpRequest, *args: object) -> bool:
            return request.user.is_superuser

        def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
            return request.user.is_superuser

        def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
            return request.user.is_superuser

    SuperusersOnly.__name__ = f"SuperusersOnly{model_admin.__name__}"
    return SuperusersOnly


# django_celery_beat comes before forwarding in INSTALLED_APPS, so its admin is registered by now.
for model, registered in list(admin.site._registry.items()):
    if model._meta.app_label == "django_celery_beat":
        admin.site.unregister(model)
        admin.site.register(model, _superusers_only(type(registered)))
