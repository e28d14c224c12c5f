"""The admin pages of forwarding: the outbox and delivery log, and the connections."""

from forwarding.admin import connections, outbox  # noqa: F401  (each registers its ModelAdmins)
