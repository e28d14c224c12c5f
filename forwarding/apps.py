from django.apps import AppConfig
from django.db.models.signals import post_migrate

from config.roles import roles_sync_after_migrate


class ForwardingConfig(AppConfig):
    name = "forwarding"

    def ready(self) -> None:
        # The ready groups (config/roles.py), after every migrate. Connected here because forwarding
        # comes last in the flow; roles_sync makes every app's permissions itself, so order does not matter.
        post_migrate.connect(roles_sync_after_migrate, sender=self, dispatch_uid="config.roles")
