"""The admin pages of forwarding: the outbox and delivery log, the connections (registered on the
connections app's models, so their URLs stay /admin/connections/connection/), and the audience's page
extended with its connections and "Connect output"."""

from forwarding.admin import audiences, connections, outbox  # noqa: F401  (each registers its ModelAdmins)
