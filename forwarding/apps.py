from django.apps import AppConfig
from django.db.models.signals import post_migrate

from audiences.membership.consumers import register_membership_consumer
from config.metrics import register_scrape_collector
from config.roles import roles_sync_after_migrate


class ForwardingConfig(AppConfig):
    name = "forwarding"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, not loaded when apps.py is.
        from forwarding import tasks  # noqa: F401  (registers the tasks under their names, for config.queueing)
        from forwarding.metrics import OutboxCollector
        from forwarding.planner import OutboxPlanner

        # Membership changes reach the outbox through audiences' change log (README, "Architecture").
        register_membership_consumer(OutboxPlanner())
        # The outbox as it stands, read at each scrape of /metrics.
        register_scrape_collector(OutboxCollector())
        # The ready groups (config/roles.py), after every migrate. Connected here because forwarding
        # comes last in the flow; roles_sync makes every app's permissions itself, so order does not matter.
        post_migrate.connect(roles_sync_after_migrate, sender=self, dispatch_uid="config.roles")
