-- schemas_get: one version of one topic, by primary key; no row when it was never registered.
-- Relays look a row's named version up here on a cache miss.
SELECT s.topic, s.version, s.format, s.compatibility, s.definition, s.fingerprint, s.created_at
  FROM outbox.schemas s
 WHERE s.topic = $1 AND s.version = $2
