-- messages_insert: one message of a topic WITHOUT a schema (as the publisher's cache says),
-- inside the caller's transaction; schema_version stays NULL.
-- The id (UUIDv7) is made by the caller, so nothing needs RETURNING; tx_id, seq and created_at
-- come from the column defaults, exactly as for outbox.publish() and the batch form. Empty
-- header maps travel as NULL and are stored as '{}'.
-- INSERT … SELECT … WHERE instead of VALUES: the row is written only if the topic still has no
-- schema in THIS database. Publishers cache "no schema" per process, and this check in the same
-- statement makes that safe against registrations by other processes and against other
-- databases, at no extra round trip (one probe of the primary key of outbox.schemas): 0 rows
-- affected means "stale, reload and validate". Stamped messages use messages_insert_stamped.sql:
-- two statements rather than one CASE on a parameter, because such a CASE makes Postgres
-- prefer a custom plan, i.e. plan the statement again on every execution.
INSERT INTO outbox.messages (id, topic, key, payload, headers)
SELECT $1::uuid, $2::text, $3::text, $4::jsonb, COALESCE($5::jsonb, '{}')
 WHERE NOT EXISTS (SELECT 1 FROM outbox.schemas s WHERE s.topic = $2)
