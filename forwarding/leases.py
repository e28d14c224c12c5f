"""A connection's lease: one worker at a time delivers (or ends) a connection, so the partner sees each
identity's changes in order.

The lease is short (FORWARDING_LEASE_SECONDS, 15 s by default) and renewed by a heartbeat thread while
its holder works (hold_lease()), partner call included, so:

* a killed worker's lease expires within one lease, and the sweeper rings the connection again;
* a lease always outlives the call it covers: a call runs only while the heartbeat renews the
  lease. When renewing fails (the lease was taken over, or the database is unreachable until the
  lease is about to expire), the heartbeat cuts the partner call in progress
  (outputs.partners.http.CallScope) and marks the lease lost, and its holder stops before
  recording anything more.

Each acquisition has its own holder token, so only the holder renews or releases its lease. In a
Celery worker the token starts with the worker's node name and main process id
(worker1@host/4242/...): a worker restarted after a crash (kill -9, its supervisor restarting it
under the same name) frees its dead predecessor's leases at start (release_leases_of_worker), so its
connections resume at once instead of after the lease. Only leases of a process that is gone are
freed: two live workers started under one name on one host keep each other's.

A connection throttled as a whole (`throttled_until`: a 429's Retry-After, or its backoff while the
partner is down, forwarding/recovery.py) cannot be leased before then.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection
from django.db.models import Q
from django.utils import timezone

from connections.models import Connection
from outputs.partners.http import CallScope

logger = logging.getLogger(__name__)


def lease_seconds() -> float:
    return float(settings.FORWARDING["LEASE_SECONDS"])


def renew_interval() -> float:
    """The heartbeat renews three times per lease: two renewals may fail before it is lost."""
    return lease_seconds() / 3


def free_of_lease(now) -> Q:
    """Connections nobody holds: no lease, or one that expired (its holder died)."""
    return Q(delivery_lease_until__isnull=True) | Q(delivery_lease_until__lt=now)


def not_throttled(now) -> Q:
    return Q(throttled_until__isnull=True) | Q(throttled_until__lte=now)


@dataclass
class Lease:
    connection_id: int
    holder: str
    # Set by the heartbeat when the lease could not be renewed: stop, record nothing more.
    lost: threading.Event = field(default_factory=threading.Event)


# "<node name>/<main pid>/" in a Celery worker (set at start-up, forwarding/tasks.py); empty elsewhere.
_holder_prefix = ""


def set_worker_name(name: str) -> None:
    """Called in the worker's main process before its pool forks: the pool's leases carry both."""
    global _holder_prefix
    _holder_prefix = f"{name[:150]}/{os.getpid()}/"


def _gone(pid: int) -> bool:
    if pid == os.getpid():
        return True  # our own pid, before any task of ours ran: a predecessor's (a container restarted)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def release_leases_of_worker(name: str) -> int:
    """Free the leases held under this worker name by a main process that is gone: called by the
    worker as it starts (the name includes the host, so the pid is this host's). Returns how many."""
    prefix = f"{name[:150]}/"
    freed = 0
    for pk, holder in Connection.objects.filter(delivery_lease_holder__startswith=prefix).values_list(
        "pk", "delivery_lease_holder"
    ):
        pid = holder[len(prefix) :].split("/", 1)[0]
        if pid.isdigit() and _gone(int(pid)):
            freed += Connection.objects.filter(pk=pk, delivery_lease_holder=holder).update(
                delivery_lease_until=None, delivery_lease_holder=""
            )
    return freed


def acquire_lease(connection_id: int, *, statuses: tuple[str, ...] = (Connection.Status.SENDING,)) -> Lease | None:
    """Take the connection's lease if nobody holds it, its status is one of `statuses` and it is
    not throttled. None when it is not for us now."""
    now = timezone.now()
    holder = f"{_holder_prefix}{uuid.uuid4().hex}"
    taken = Connection.objects.filter(
        free_of_lease(now), not_throttled(now), pk=connection_id, status__in=statuses
    ).update(delivery_lease_until=now + timedelta(seconds=lease_seconds()), delivery_lease_holder=holder)
    return Lease(connection_id, holder) if taken == 1 else None


def renew_lease(lease: Lease) -> bool:
    """Extend a lease its holder still has; False when it expired or someone else holds it now."""
    now = timezone.now()
    renewed = Connection.objects.filter(
        pk=lease.connection_id, delivery_lease_holder=lease.holder, delivery_lease_until__gte=now
    ).update(delivery_lease_until=now + timedelta(seconds=lease_seconds()))
    return renewed == 1


def release_lease(lease: Lease) -> None:
    """Give the lease back, at once. Called on the way out of a failure too, often because the
    database dropped our connection: then once more on a fresh connection. If that fails as well,
    the lease expires by itself within FORWARDING_LEASE_SECONDS."""
    for attempt in (1, 2):
        try:
            Connection.objects.filter(pk=lease.connection_id, delivery_lease_holder=lease.holder).update(
                delivery_lease_until=None, delivery_lease_holder=""
            )
            return
        except (OperationalError, InterfaceError):
            connection.close()
            if attempt == 2:
                logger.warning("could not release connection %s's lease; it expires by itself", lease.connection_id)


class _Heartbeat(threading.Thread):
    """Renews a lease every renew_interval() until stopped; cuts the partner call when it cannot."""

    def __init__(self, lease: Lease, scope: CallScope, also: Callable[[], object] | None) -> None:
        super().__init__(name=f"lease-heartbeat-{lease.connection_id}", daemon=True)
        self.lease = lease
        self.scope = scope
        self.also = also
        self.stopped = threading.Event()

    def run(self) -> None:
        # The lease runs until at least this (monotonic) moment; cut the call before, with a
        # renewal interval to spare for the holder to stop and leave.
        renewed_at = time.monotonic()
        try:
            while not self.stopped.wait(renew_interval()):
                try:
                    if not renew_lease(self.lease):
                        self._lose("the lease was taken over or expired")
                        return
                    renewed_at = time.monotonic()
                    if self.also is not None:
                        self.also()
                except (OperationalError, InterfaceError) as exc:
                    connection.close()  # the next renewal reconnects
                    if time.monotonic() - renewed_at >= lease_seconds() - renew_interval():
                        self._lose(f"the lease could not be renewed ({exc.__class__.__name__})")
                        return
        finally:
            connection.close()  # this thread's own database connection

    def _lose(self, why: str) -> None:
        logger.warning("connection %s: %s; cutting the partner call", self.lease.connection_id, why)
        self.lease.lost.set()
        self.scope.cut(f"the delivery lease was lost: {why}")


@contextmanager
def hold_lease(lease: Lease, *, also_renew: Callable[[], object] | None = None) -> Iterator[Lease]:
    """Keep `lease` while the body runs (the heartbeat; `also_renew` is called after each renewal),
    then release it. Partner calls made in the body are cut if the lease is lost (check
    `lease.lost` before recording their outcome)."""
    scope = CallScope()
    heartbeat = _Heartbeat(lease, scope, also_renew)
    heartbeat.start()
    try:
        with scope:
            yield lease
    finally:
        heartbeat.stopped.set()
        heartbeat.join()
        release_lease(lease)
