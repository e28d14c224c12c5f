"""Mounted at /v2/ by config/urls.py, as mParticle's server-to-server API is (https://s2s.mparticle.com/v2)."""

from django.urls import path

from audiences.events_api import views

app_name = "events_api"
urlpatterns = [
    path("events", views.events, name="events"),
    path("bulkevents", views.bulk_events, name="bulkevents"),
]
