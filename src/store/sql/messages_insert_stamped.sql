-- messages_insert_stamped: one message validated against schema version $4 (fingerprint $6)
-- of its topic, inside the caller's transaction, stamped with that version.
-- The row is written only if that version, with that fingerprint, is still the topic's latest
-- in THIS database: publishers cache the latest version per process, and this check in the
-- same statement keeps the cache honest at no extra round trip (two probes of the primary key
-- of outbox.schemas). 0 rows affected means "stale, reload and validate again". See
-- messages_insert.sql for the rest of the row.
INSERT INTO outbox.messages (id, topic, key, schema_version, payload, headers)
SELECT $1::uuid, $2::text, $3::text, $4::integer, $5::jsonb, COALESCE($7::jsonb, '{}')
 WHERE EXISTS (SELECT 1 FROM outbox.schemas s
                WHERE s.topic = $2 AND s.version = $4 AND s.fingerprint = $6)
   AND NOT EXISTS (SELECT 1 FROM outbox.schemas s WHERE s.topic = $2 AND s.version > $4)
