-- messages_insert_batch: many messages in ONE statement (one round trip, one plan), inside the
-- caller's transaction. Parallel arrays are unnested together; WITH ORDINALITY + ORDER BY keep
-- the identity `seq` in the caller's order, so positions follow the slice order. Empty header
-- maps travel as NULL (nothing to encode or parse) and are stored as '{}'.
-- Schema stamps: $7..$9 hold one (topic, version, fingerprint) per distinct topic of the batch,
-- version NULL for a topic that had no schema. `stale` finds a stamp that is no longer the
-- topic's latest version in this database (see messages_insert.sql); if there is one, the
-- uncorrelated NOT EXISTS filters out every row, so the batch is all or nothing and the caller
-- sees 0 rows affected, reloads and validates again.
WITH stale AS (
    SELECT 1
      FROM UNNEST($7::text[], $8::integer[], $9::text[]) AS stamp (topic, version, fingerprint)
     WHERE NOT CASE WHEN stamp.version IS NULL
                    THEN NOT EXISTS (SELECT 1 FROM outbox.schemas s WHERE s.topic = stamp.topic)
                    ELSE EXISTS (SELECT 1 FROM outbox.schemas s
                                  WHERE s.topic = stamp.topic AND s.version = stamp.version
                                    AND s.fingerprint = stamp.fingerprint)
                         AND NOT EXISTS (SELECT 1 FROM outbox.schemas s
                                          WHERE s.topic = stamp.topic AND s.version > stamp.version)
               END
     LIMIT 1
)
INSERT INTO outbox.messages (id, topic, key, schema_version, payload, headers)
SELECT batch.id, batch.topic, batch.key, batch.schema_version, batch.payload,
       COALESCE(batch.headers, '{}')
  FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::integer[], $5::jsonb[], $6::jsonb[])
       WITH ORDINALITY AS batch (id, topic, key, schema_version, payload, headers, ordinal)
 WHERE NOT EXISTS (SELECT 1 FROM stale)
 ORDER BY batch.ordinal
