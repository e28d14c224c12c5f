"""Fixtures of the forwarding tests: an audience connected to the tests' own bulk partner
(tests/fakes/partners.py), registered for the test, with the queued tasks recorded (`rings`); the local
Mailchimp server for the connection life-cycle tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from audiences.models import Audience
from connections.models import Connection
from local_partners.mailchimp import LocalMailchimpServer
from tests import factories
from tests.fakes.partners import BulkListPartner, registered


@pytest.fixture
def bulk_audience(rings) -> Iterator[Audience]:
    with registered(BulkListPartner):
        yield factories.active_audience()


@pytest.fixture
def bulk_connection(bulk_audience) -> Connection:
    return factories.bulk_connection(bulk_audience)


@pytest.fixture
def committed_bulk_connection(transactional_db, rings) -> Iterator[Connection]:
    """The same, committed (a transactional test): transaction.on_commit callbacks run."""
    with registered(BulkListPartner):
        yield factories.bulk_connection(factories.active_audience())


@pytest.fixture
def server(settings, rings) -> Iterator[LocalMailchimpServer]:
    """The local Mailchimp server over HTTP, with the lists "old" and "new", as every Mailchimp output's partner."""
    with LocalMailchimpServer(api_keys=[factories.MAILCHIMP_KEY]) as server:
        server.create_list("old")
        server.create_list("new")
        settings.PARTNER_API_BASE_URLS = {"mailchimp": server.base_url}
        yield server
