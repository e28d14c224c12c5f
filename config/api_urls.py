"""The REST API, mounted at /api/v1/ by config/urls.py."""

from rest_framework.routers import DefaultRouter

from audiences.api import AudienceViewSet, ProfileViewSet
from forwarding.api import ConnectionViewSet
from outputs.api import OutputViewSet, PartnerViewSet

router = DefaultRouter()
router.register("profiles", ProfileViewSet, basename="profile")
router.register("audiences", AudienceViewSet, basename="audience")
router.register("partners", PartnerViewSet, basename="partner")
router.register("outputs", OutputViewSet, basename="output")
router.register("connections", ConnectionViewSet, basename="connection")

urlpatterns = router.urls
