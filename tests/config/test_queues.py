"""Queues per kind of work (config/queues.py): routing, and a worker of the realtime queue alone."""

from __future__ import annotations

from django.conf import settings

from audiences.membership.recompute import RECOMPUTE_TASK
from config import queues
from config.celery import app
from forwarding.doorbell import DELIVER_TASK, END_TASK


def routed_queue(task_name: str) -> str:
    return app.amqp.router.route({}, task_name)["queue"].name


def test_a_recompute_and_a_delivery_go_to_different_queues_under_the_deployment_prefix():
    prefix = app.conf.task_default_queue
    assert routed_queue(DELIVER_TASK) == f"{prefix}.realtime"
    assert routed_queue(RECOMPUTE_TASK) == f"{prefix}.recompute"
    assert routed_queue("audiences.tasks.recompute_time_based_audiences") == f"{prefix}.recompute"
    assert routed_queue("forwarding.tasks.sweep_pending_work") == f"{prefix}.maintenance"
    assert routed_queue(END_TASK) == f"{prefix}.bulk"


def test_every_registered_task_of_ours_has_a_queue_of_its_kind():
    ours = [name for name in app.tasks if name.split(".")[0] in {"audiences", "forwarding", "config"}]
    assert ours
    for name in ours:
        assert queues.task_kind(name) in queues.KINDS, name


def test_tasks_added_later_go_by_their_name_or_app():
    assert queues.task_kind("forwarding.tasks.flush_bulk_uploads") == queues.BULK
    assert queues.task_kind("audiences.tasks.erase_profile") == queues.INGESTION
    assert queues.task_kind("somewhere.else") is None


def test_a_worker_without_q_consumes_every_queue():
    consumed = set(app.amqp.queues)
    assert set(queues.queue_names(settings.CELERY_TASK_DEFAULT_QUEUE)) <= consumed


def test_each_declared_queue_is_bound_by_its_own_name_so_a_task_lands_in_one_queue(settings):
    # Queue(name) alone would bind every queue to the default exchange's one routing key.
    declared = queues.declared_queues(settings.CELERY_TASK_DEFAULT_QUEUE)
    assert [q.routing_key for q in declared] == [q.name for q in declared]
    assert len({q.exchange.name for q in declared}) == len(declared)
    routed = app.amqp.router.route({}, DELIVER_TASK)["queue"]
    assert (routed.exchange.name, routed.routing_key) == (routed.name, routed.name)
