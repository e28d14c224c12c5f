"""What the REST API's viewsets share besides settings."""

from __future__ import annotations

from typing import Any

from rest_framework.generics import get_object_or_404


class ObjectLookupMixin:
    """For viewsets: a single object (retrieve, update, delete, and detail actions such as
    /members/) is found by its id alone. DRF would run the list's filters on that lookup too, so a
    list parameter would turn into a 404, or a 400 for a parameter the action itself takes."""

    def get_object(self) -> Any:
        lookup_url_kwarg = self.lookup_url_kwarg or self.lookup_field  # type: ignore[attr-defined]
        obj = get_object_or_404(
            self.get_queryset(),  # type: ignore[attr-defined]
            **{self.lookup_field: self.kwargs[lookup_url_kwarg]},  # type: ignore[attr-defined]
        )
        self.check_object_permissions(self.request, obj)  # type: ignore[attr-defined]
        return obj
