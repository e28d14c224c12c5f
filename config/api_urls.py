"""The REST API, mounted at /api/v1/ by config/urls.py, with its OpenAPI schema and docs pages."""

from django.urls import path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.permissions import IsAdminUser
from rest_framework.routers import APIRootView, DefaultRouter

from audiences.api import ProfileErasureViewSet, ProfileViewSet
from forwarding.api import ConnectedAudienceViewSet, ConnectionViewSet
from outputs.api import OutputViewSet, PartnerViewSet


class APIRoot(APIRootView):
    """GET /api/v1/: the list of endpoints. It shows no data, so any staff user may read it."""

    permission_classes = [IsAdminUser]


router = DefaultRouter()
router.APIRootView = APIRoot
router.register("profiles", ProfileViewSet, basename="profile")
router.register("erasures", ProfileErasureViewSet, basename="erasure")
# The audience resource as forwarding extends it with the audience's connections.
router.register("audiences", ConnectedAudienceViewSet, basename="audience")
router.register("partners", PartnerViewSet, basename="partner")
router.register("outputs", OutputViewSet, basename="output")
router.register("connections", ConnectionViewSet, basename="connection")

urlpatterns = [
    # Public, like any API description: they show no data.
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
    *router.urls,
]
