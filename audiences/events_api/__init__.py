"""The mParticle-compatible Events API: POST /v2/events and /v2/bulkevents (parsing, identity resolution,
ingestion, views)."""
