-- schemas_latest: the newest version of one topic, or no row when the topic has none.
-- ORDER BY version DESC LIMIT 1 walks the primary key (topic, version) backwards: one index
-- probe, however many versions the topic has. Publishers run it inside their own transaction
-- (so it sees the same snapshot as their insert's stamp check) and relays run it on the pool.
SELECT s.topic, s.version, s.format, s.compatibility, s.definition, s.fingerprint, s.created_at
  FROM outbox.schemas s
 WHERE s.topic = $1
 ORDER BY s.version DESC
 LIMIT 1
