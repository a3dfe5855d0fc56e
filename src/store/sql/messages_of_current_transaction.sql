-- messages_of_current_transaction: what the caller's open transaction has published so far,
-- in position order. pg_current_xact_id_if_assigned() is NULL before the first write, and
-- then nothing can have been published (tx_id = NULL matches no row). The payload comes as
-- text: sqlx decodes jsonb with serde_json's 128-level limit, and Postgres nests deeper.
SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers, m.created_at
  FROM outbox.messages m
 WHERE m.tx_id = pg_current_xact_id_if_assigned()
 ORDER BY m.tx_id, m.seq
