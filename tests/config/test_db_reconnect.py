"""A dropped database connection does not turn into a 500 (issue 6, item 6).

Found under faults: after PostgreSQL dropped its connections, the first request of each web
worker answered 500 and its Events API batches were lost unless the client sent them again.

These tests use the real WSGI stack: a wsgiref server in a thread running config.wsgi's
application, one thread for every request, so its database connection persists from request to
request (CONN_MAX_AGE > 0) exactly as in a gunicorn worker. Django's test client would not do:
it skips the request_started/request_finished connection handling that a server runs.
Backends are terminated for real, with pg_terminate_backend, from a second connection.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import DatabaseError, OperationalError, connection, connections, transaction
from rest_framework.authtoken.models import Token

from audiences.inputs import input_create
from audiences.models import BatchReceipt, Event, Identity, Profile
from config.db import atomic_with_reconnect
from tests.conftest import service_missing
from tests.fixtures.postgres_faults import terminate_backends

pytestmark = pytest.mark.django_db(transaction=True)


class QuietHandler(WSGIRequestHandler):
    disable_nagle_algorithm = True  # GUIDE: without it, delayed ACKs stall a keep-alive client

    def log_message(self, format: str, *args: object) -> None:
        pass


class Server:
    """config.wsgi's application on a free port, served by one thread."""

    def __init__(self) -> None:
        self.httpd: WSGIServer = make_server("127.0.0.1", 0, get_wsgi_application(), handler_class=QuietHandler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self._backend_pids: list[int] = []  # the server thread's backend after each request
        self._finished = threading.Condition()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        try:
            self.httpd.serve_forever(poll_interval=0.05)
        finally:
            connections.close_all()  # this thread's connection, so the test database can be dropped

    def _record_backend(self, **kwargs: object) -> None:
        # Sent in the server thread as a request ends, after Django's own close_old_connections.
        if threading.current_thread() is self.thread and connection.connection is not None:
            with self._finished:
                self._backend_pids.append(connection.connection.info.backend_pid)
                self._finished.notify_all()

    def backend_pids(self, requests: int) -> list[int]:
        """The server's backend pid after each of the first `requests` requests. A client has its
        answer a moment before the server has finished the request: wait for that."""
        with self._finished:
            assert self._finished.wait_for(lambda: len(self._backend_pids) >= requests, timeout=10)
            return self._backend_pids[:requests]

    def __enter__(self) -> Server:
        request_finished.connect(self._record_backend)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        request_finished.disconnect(self._record_backend)
        self.httpd.shutdown()
        self.thread.join(10)
        self.httpd.server_close()


@pytest.fixture
def server(transactional_db, monkeypatch) -> Iterator[Server]:
    if connection.vendor != "postgresql":
        service_missing("terminating backends needs PostgreSQL: set DATABASE_URL=postgres://...")
    # As in production: connections persist between requests (the default is 60 s).
    monkeypatch.setitem(connections.settings["default"], "CONN_MAX_AGE", 60)
    assert connections.settings["default"]["CONN_HEALTH_CHECKS"] is True
    with Server() as running:
        yield running


@pytest.fixture
def events_auth(transactional_db) -> tuple[str, str]:
    instance, secret = input_create("web backend")
    return instance.key, secret


def post_batch(server: Server, auth: tuple[str, str], source_request_id: str | None, email: str) -> requests.Response:
    body = {
        "environment": "production",
        "user_identities": {"email": email},
        "events": [{"event_type": "custom_event", "data": {"event_name": "Visit", "custom_event_type": "other"}}],
    }
    if source_request_id:
        body["source_request_id"] = source_request_id
    return requests.post(f"{server.url}/v2/events", json=body, auth=auth, timeout=30)


def kill_own_connection_once(when: Callable[[str], bool]) -> Callable[..., object]:
    """A receiver for request_started: during that request, terminate the request's own backend
    just before the first statement for which when(sql) is true, inside a transaction."""
    armed = {"left": 1}

    def killer(execute, sql, params, many, context):
        db = context["connection"]
        if armed["left"] and db.in_atomic_block and when(sql):
            armed["left"] = 0
            terminate_backends([db.connection.info.backend_pid])
        return execute(sql, params, many, context)

    def install(**kwargs: object) -> None:
        if killer not in connection.execute_wrappers:
            connection.execute_wrappers.append(killer)

    install.killer = killer  # type: ignore[attr-defined]
    return install


@pytest.fixture
def kill_in_transaction(server) -> Iterator[Callable[[Callable[[str], bool]], None]]:
    """Arm a kill for the server's next request (installed in the server thread's connection)."""
    receivers = []

    def arm(when: Callable[[str], bool]) -> None:
        receiver = kill_own_connection_once(when)
        receivers.append(receiver)
        request_started.connect(receiver)

    yield arm
    for receiver in receivers:
        request_started.disconnect(receiver)


def is_insert(sql: str) -> bool:
    return sql.lstrip().upper().startswith("INSERT")


# --- the Events API -------------------------------------------------------------------------


def test_first_events_request_after_the_database_dropped_its_connections_is_accepted(server, events_auth):
    assert post_batch(server, events_auth, "first", "ana@example.com").status_code == 202
    (before,) = server.backend_pids(1)
    assert before in terminate_backends()  # every backend of the database, the server's included
    connection.close()  # this thread's connection was one of them

    response = post_batch(server, events_auth, "second", "bo@example.com")

    assert response.status_code == 202, response.text
    assert set(BatchReceipt.objects.values_list("source_request_id", flat=True)) == {"first", "second"}
    assert Identity.objects.filter(type="email", value="bo@example.com").exists()
    assert server.backend_pids(2)[1] != before  # the request ran on a new connection


@pytest.mark.parametrize("source_request_id", ["with-an-id", None])
def test_events_request_whose_transaction_loses_its_connection_is_stored_once(
    server, events_auth, kill_in_transaction, source_request_id
):
    assert post_batch(server, events_auth, None, "warm@example.com").status_code == 202  # a persistent connection
    kill_in_transaction(is_insert)  # the ingestion's first INSERT (receipts, or the new profile)

    response = post_batch(server, events_auth, source_request_id, "ana@example.com")

    assert response.status_code == 202, response.text
    profile = Profile.objects.get(identities__type="email", identities__value="ana@example.com")
    assert Event.objects.filter(profile=profile).count() == 1  # stored once
    assert BatchReceipt.objects.count() == (1 if source_request_id else 0)
    assert len(set(server.backend_pids(2))) == 2  # the retry ran on a new connection


def test_bulk_request_whose_transaction_loses_its_connection_is_stored_once(server, events_auth, kill_in_transaction):
    post_batch(server, events_auth, None, "warm@example.com")
    kill_in_transaction(lambda sql: "audiences_event" in sql or "COPY" in sql.upper() or is_insert(sql))
    batches = [
        {"environment": "production", "source_request_id": f"b{i}", "user_identities": {"email": f"u{i}@example.com"}}
        for i in range(3)
    ]

    response = requests.post(f"{server.url}/v2/bulkevents", json=batches, auth=events_auth, timeout=30)

    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": [0, 1, 2]}
    assert BatchReceipt.objects.count() == 3
    assert Identity.objects.filter(value__startswith="u").count() == 3


# --- the REST profile upsert ----------------------------------------------------------------


def test_profile_upsert_whose_transaction_loses_its_connection_is_stored_once(
    server, kill_in_transaction, django_user_model
):
    admin = django_user_model.objects.create_superuser("admin", "admin@example.com", "pw-for-tests")
    headers = {"Authorization": f"Token {Token.objects.create(user=admin).key}"}
    body = {"identities": [{"type": "email", "value": "ana@example.com"}], "attributes": {"status": "Premium"}}
    warm = requests.get(f"{server.url}/api/v1/profiles/", headers=headers, timeout=30)
    assert warm.status_code == 200
    kill_in_transaction(is_insert)

    response = requests.post(f"{server.url}/api/v1/profiles/", json=body, headers=headers, timeout=30)

    assert response.status_code == 201, response.text
    assert Profile.objects.count() == 1
    assert Profile.objects.get().attributes == {"status": "Premium"}


# --- the retry itself -----------------------------------------------------------------------


@pytest.fixture
def postgres(transactional_db) -> None:
    if connection.vendor != "postgresql":
        service_missing("terminating backends needs PostgreSQL: set DATABASE_URL=postgres://...")


def create_profile_then_lose_the_connection(calls: list[int]) -> Callable[[], Profile]:
    """Work whose connection dies after its writes, so that COMMIT is what fails."""

    def work() -> Profile:
        calls.append(1)
        profile = Profile.objects.create(attributes={"n": len(calls)})
        if len(calls) == 1:
            terminate_backends([connection.connection.info.backend_pid])
        return profile

    return work


def test_loss_during_commit_is_not_retried_unless_replay_safe(postgres):
    calls: list[int] = []

    with pytest.raises(OperationalError):
        atomic_with_reconnect(create_profile_then_lose_the_connection(calls))

    assert calls == [1]  # the outcome of COMMIT is unknown: running it again could store it twice


def test_loss_during_commit_is_retried_when_replay_safe(postgres):
    calls: list[int] = []

    profile = atomic_with_reconnect(create_profile_then_lose_the_connection(calls), replay_safe=True)

    assert calls == [1, 1]
    assert list(Profile.objects.values_list("pk", "attributes")) == [(profile.pk, {"n": 2})]


def test_an_error_on_a_working_connection_is_not_retried(postgres):
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL statement_timeout = 1")
            cursor.execute("SELECT pg_sleep(1)")  # canceled: an OperationalError, the connection fine

    with pytest.raises(OperationalError):
        atomic_with_reconnect(work, replay_safe=True)

    assert calls == [1]


def test_a_failed_statement_is_not_retried_on_any_database(transactional_db):
    # A real statement error, on a working connection: SQLite raises it as an OperationalError
    # (like "database is locked"), PostgreSQL as a ProgrammingError. Neither is a lost connection.
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table")

    with pytest.raises(DatabaseError):
        atomic_with_reconnect(work, replay_safe=True)

    assert calls == [1]
    assert Profile.objects.count() == 0  # and the connection still works


def test_inside_an_outer_transaction_nothing_is_retried(postgres):
    calls: list[int] = []
    with pytest.raises(OperationalError), transaction.atomic():
        atomic_with_reconnect(create_profile_then_lose_the_connection(calls), replay_safe=True)
        Profile.objects.count()  # the outer transaction's connection is gone too

    assert calls == [1]
