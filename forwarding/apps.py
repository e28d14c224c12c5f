from django.apps import AppConfig


class ForwardingConfig(AppConfig):
    name = "forwarding"
