"""The REST API, mounted at /api/v1/ by config/urls.py."""

from rest_framework.routers import DefaultRouter

from audiences.api import ProfileViewSet
from forwarding.api import ConnectedAudienceViewSet, ConnectionViewSet
from outputs.api import OutputViewSet, PartnerViewSet

router = DefaultRouter()
router.register("profiles", ProfileViewSet, basename="profile")
# The audience resource as forwarding extends it with the audience's connections.
router.register("audiences", ConnectedAudienceViewSet, basename="audience")
router.register("partners", PartnerViewSet, basename="partner")
router.register("outputs", OutputViewSet, basename="output")
router.register("connections", ConnectionViewSet, basename="connection")

urlpatterns = router.urls
