-- messages_insert: one message, inside the caller's transaction, stamped with the schema
-- version it was validated against ($4, with that version's fingerprint $7), or with NULL when
-- the topic had no schema.
-- The id (UUIDv7) is made by the caller, so nothing needs RETURNING; tx_id, seq and created_at
-- come from the column defaults, exactly as for outbox.publish() and the batch form. Empty
-- header maps travel as NULL and are stored as '{}'.
-- INSERT … SELECT … WHERE instead of VALUES: the row is written only if the stamp is still the
-- topic's latest version in THIS database (or the topic still has none). Publishers cache the
-- latest version per process, and this check in the same statement makes that cache safe
-- against registrations by other processes and against other databases, at no extra round
-- trip: 0 rows affected means "stale, reload and validate again". One or two probes of the
-- primary key of outbox.schemas; the CASE evaluates only the branch it needs.
INSERT INTO outbox.messages (id, topic, key, schema_version, payload, headers)
SELECT $1::uuid, $2::text, $3::text, $4::integer, $5::jsonb, COALESCE($6::jsonb, '{}')
 WHERE CASE WHEN $4::integer IS NULL
            THEN NOT EXISTS (SELECT 1 FROM outbox.schemas s WHERE s.topic = $2)
            ELSE EXISTS (SELECT 1 FROM outbox.schemas s
                          WHERE s.topic = $2 AND s.version = $4 AND s.fingerprint = $7)
                 AND NOT EXISTS (SELECT 1 FROM outbox.schemas s
                                  WHERE s.topic = $2 AND s.version > $4)
       END
