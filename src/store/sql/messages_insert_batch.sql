-- messages_insert_batch: many messages in ONE statement (one round trip, one plan), inside the
-- caller's transaction. Parallel arrays are unnested together; WITH ORDINALITY + ORDER BY keep
-- the identity `seq` in the caller's order, so positions follow the slice order. Empty header
-- maps travel as NULL (nothing to encode or parse) and are stored as '{}'.
INSERT INTO outbox.messages (id, topic, key, payload, headers)
SELECT batch.id, batch.topic, batch.key, batch.payload, COALESCE(batch.headers, '{}')
  FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::jsonb[], $5::jsonb[])
       WITH ORDINALITY AS batch (id, topic, key, payload, headers, ordinal)
 ORDER BY batch.ordinal
