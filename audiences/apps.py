from django.apps import AppConfig


class AudiencesConfig(AppConfig):
    name = "audiences"

    def ready(self) -> None:
        # Registers the tasks under their names in every process, so config.queueing can queue them.
        # Imported here, not at the top: the task modules import models, not loaded when apps.py is.
        from audiences import tasks  # noqa: F401
