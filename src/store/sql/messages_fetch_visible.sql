-- messages_fetch_visible: the next batch after a group's cursor, in position order, and only
-- below the snapshot's xmin (DESIGN §3). Every transaction with an id below xmin has ended, so
-- no row can still appear below what this returns: a transaction that took a lower id but
-- commits late is waited for, never skipped. The row comparison walks the primary key.
-- Columns are qualified; ORDER BY names the xid8 column, not the text alias.
-- The read is fenced by the lease ($4 group, $5 owner, $6 epoch; one primary-key lookup, run
-- once): a relay whose lease was taken away (a pause, a replay, a takeover) reads nothing, so
-- it appends nothing more, and finds out at its next fenced update.
SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.messages m
 WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
   AND m.tx_id < pg_snapshot_xmin(pg_current_snapshot())
   AND EXISTS (SELECT 1 FROM outbox.consumer_groups g
                WHERE g.name = $4 AND g.lease_owner = $5 AND g.lease_epoch = $6)
 ORDER BY m.tx_id, m.seq
 LIMIT $3
