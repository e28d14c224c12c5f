from django.contrib import admin
from django.urls import include, path

# The admin names the product, and "View site" leads to the REST API's root (there is no public site).
admin.site.site_header = "Audience Forwarding"
admin.site.site_title = "Audience Forwarding"
admin.site.index_title = "Audiences, outputs and connections"
admin.site.site_url = "/api/v1/"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/v1/", include("config.api_urls")),
    path("v2/", include("audiences.events_api.urls")),
]

# Under /api/, a missing route or a crash answers the API's error shape instead of an HTML page.
handler404 = "config.api_errors.not_found_page"
handler500 = "config.api_errors.server_error_page"
