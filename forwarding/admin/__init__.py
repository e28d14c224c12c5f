"""The admin pages of forwarding: the outbox and delivery log, the connections (registered on the
connections app's models, so their URLs stay /admin/connections/connection/), the audience's page
extended with its connections and "Connect output", the output list with its connections' count, and the
periodic tasks kept to superusers."""

from forwarding.admin import audiences, beat, connections, outbox, outputs, profiles  # noqa: F401  (each registers its ModelAdmins)
