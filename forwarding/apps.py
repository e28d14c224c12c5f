from django.apps import AppConfig

from audiences.membership.consumers import register_membership_consumer


class ForwardingConfig(AppConfig):
    name = "forwarding"

    def ready(self) -> None:
        # Imported here, not at the top: these modules import models, not loaded when apps.py is.
        from forwarding import tasks  # noqa: F401  (registers the tasks under their names, for config.queueing)
        from forwarding.planner import OutboxPlanner

        # Membership changes reach the outbox through audiences' change log (README, "Architecture").
        register_membership_consumer(OutboxPlanner())
