-- messages_fetch_visible: the next batch after a group's cursor, in position order, and only
-- below the snapshot's xmin (DESIGN §3). Every transaction with an id below xmin has ended, so
-- no row can still appear below what this returns: a transaction that took a lower id but
-- commits late is waited for, never skipped. The row comparison walks the primary key.
-- Columns are qualified; ORDER BY names the xid8 column, not the text alias.
SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.messages m
 WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
   AND m.tx_id < pg_snapshot_xmin(pg_current_snapshot())
 ORDER BY m.tx_id, m.seq
 LIMIT $3
