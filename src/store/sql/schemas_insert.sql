-- schemas_insert: a new version of a topic. The caller holds schemas_lock_topic and computed
-- version = latest + 1 under it, so two registrations cannot both take one number (the primary
-- key would refuse the second anyway).
INSERT INTO outbox.schemas (topic, version, format, compatibility, definition, fingerprint)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING created_at
