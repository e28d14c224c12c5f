"""The admin pages of forwarding: the outbox and delivery log, the connections (registered on the
connections app's models, so their URLs stay /admin/connections/connection/), the audience's page
extended with its connections and "Connect output", and the output list with its connections' count."""

from forwarding.admin import audiences, connections, outbox, outputs  # noqa: F401  (each registers its ModelAdmins)
