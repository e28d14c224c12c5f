"""Fixtures of the connection life-cycle tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from local_partners.mailchimp import LocalMailchimpServer
from tests import factories


@pytest.fixture
def server(settings, rings) -> Iterator[LocalMailchimpServer]:
    """The local Mailchimp server over HTTP, with the lists "old" and "new", as every Mailchimp output's partner."""
    with LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY]) as server:
        server.create_list("old")
        server.create_list("new")
        settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
        yield server
