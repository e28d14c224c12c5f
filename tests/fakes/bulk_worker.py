"""The Celery app of an end-to-end worker that uploads to the tests' HTTP bulk partner: the service's own app,
with BulkMailchimp registered in the worker process too (`celery -A tests.fakes.bulk_worker worker`; the
test process registers it with tests.fakes.partners.registered)."""

from config.celery import app
from outputs.partners.registry import register_partner
from tests.fakes.partners import BulkMailchimp

register_partner(BulkMailchimp)

__all__ = ["app"]
