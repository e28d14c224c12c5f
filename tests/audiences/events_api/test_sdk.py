"""The official `mparticle` Python SDK (0.16.1) against our server, with only its host changed.

The SDK builds every URL as `configuration.host + resource_path` ("/events", "/bulkevents") with the
default host "https://s2s.mparticle.com/v2" (mparticle/api_client.py, mparticle/apis/events_api.py), so
pointing it at us is `host = <our base URL> + "/v2"`. Real HTTP: pytest-django's live_server, no mocks.
"""

from __future__ import annotations

import mparticle
import pytest
from mparticle.rest import ApiException

from audiences.inputs import input_create
from audiences.models import Event, Profile

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def sdk(live_server, monkeypatch):
    """A factory of SDK clients pointed at the live server (only the host changes)."""
    # The live server's request threads would keep their connections open (CONN_MAX_AGE) and stop the
    # test database from being dropped at the end: close them after each request. SQLite's in-memory
    # test database is instead one connection the server threads share: they must never close it, not
    # even after this test (a keep-alive request thread ends later), so that patch is not undone
    # (`_close_connections` is Django's hook "used for mocking in tests"; only live servers use it).
    from django.core.servers.basehttp import ThreadedWSGIServer
    from django.db import connections

    if connections["default"].vendor == "postgresql":
        monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 0)
    else:
        ThreadedWSGIServer._close_connections = lambda server: None
    clients: list[mparticle.EventsApi] = []

    def make(key: str, secret: str) -> mparticle.EventsApi:
        config = mparticle.Configuration()
        config.api_key = key
        config.api_secret = secret
        config.host = f"{live_server.url}/v2"
        clients.append(mparticle.EventsApi(config))
        return clients[-1]

    yield make
    for client in clients:
        client.api_client.rest_client.pool_manager.clear()  # close the SDK's keep-alive connections


def sdk_batch(customer_id: str, email: str, gaid: str = "38400000-8CF0-11BD-B23E-10B96E40000D") -> mparticle.Batch:
    batch = mparticle.Batch()
    batch.environment = "development"
    identities = mparticle.UserIdentities()
    identities.customerid = customer_id
    identities.email = email
    batch.user_identities = identities
    batch.user_attributes = {"Status": "Premium", "Favourite_City": "Paris", "Genres": ["travel", "food"]}
    video = mparticle.AppEvent("Destination Intro", "media")
    video.custom_attributes = {"City": "Paris"}
    screen = mparticle.ScreenViewEvent()
    screen.screen_name = "Home"
    batch.events = [mparticle.SessionStartEvent(), video, screen]
    device = mparticle.DeviceInformation()
    device.platform = "Android"
    device.android_advertising_id = gaid
    batch.device_info = device
    return batch


def test_sdk_upload_events_stores_profile_and_events(sdk):
    instance, secret = input_create("python sdk")
    api = sdk(instance.key, secret)

    api.upload_events(sdk_batch("cust-1", "Parisian@Example.com"))

    profile = Profile.objects.get()
    assert profile.attributes == {"status": "Premium", "favourite_city": "Paris", "genres": ["travel", "food"]}
    assert set(profile.identities.values_list("type", "value")) == {
        ("customer", "cust-1"),
        ("email", "parisian@example.com"),
        ("google_advertising_id", "38400000-8cf0-11bd-b23e-10b96e40000d"),
    }
    events = list(Event.objects.filter(profile=profile).order_by("id").values_list("event_type", "name", "attributes"))
    assert events == [
        ("session_start", "session_start", {}),
        ("custom_event", "Destination Intro", {"city": "Paris"}),
        ("screen_view", "Home", {}),
    ]


def test_sdk_bulk_upload_events(sdk):
    instance, secret = input_create("python sdk")
    api = sdk(instance.key, secret)

    api.bulk_upload_events(
        [
            sdk_batch("cust-1", "a@example.com", "38400000-8cf0-11bd-b23e-10b96e400001"),
            sdk_batch("cust-2", "b@example.com", "38400000-8cf0-11bd-b23e-10b96e400002"),
        ]
    )

    assert Profile.objects.count() == 2
    assert Event.objects.filter(name="Destination Intro").count() == 2


def test_sdk_with_a_wrong_secret_gets_401(sdk):
    instance, _ = input_create("python sdk")
    api = sdk(instance.key, "wrong")
    with pytest.raises(ApiException) as caught:
        api.upload_events(sdk_batch("cust-1", "a@example.com"))
    assert caught.value.status == 401
    assert not Profile.objects.exists()
