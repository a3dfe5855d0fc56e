-- messages_fetch_visible: the next batch after a group's cursor, in position order, and only
-- below the snapshot's xmin (DESIGN §3). Every transaction with an id below xmin has ended, so
-- no row can still appear below what this returns: a transaction that took a lower id but
-- commits late is waited for, never skipped. The row comparison walks the primary key.
-- Columns are qualified; ORDER BY names the xid8 column, not the text alias.
--
-- The read is fenced by the lease ($4 group, $5 owner, $6 epoch): the group's row (one
-- primary-key lookup) drives the read. No row at all: the lease was taken away (a pause, a
-- replay, a takeover), so the relay appends nothing more and stands by at once. One row with
-- NULL message columns: the lease is held and nothing is visible past the cursor.
SELECT m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.consumer_groups g
  LEFT JOIN LATERAL (
        SELECT v.tx_id, v.seq, v.id, v.topic, v.key, v.schema_version, v.payload, v.headers,
               v.created_at
          FROM outbox.messages v
         WHERE (v.tx_id, v.seq) > ($1::text::xid8, $2)
           AND v.tx_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY v.tx_id, v.seq
         LIMIT $3
       ) AS m ON true
 WHERE g.name = $4 AND g.lease_owner = $5 AND g.lease_epoch = $6
 ORDER BY m.tx_id, m.seq
