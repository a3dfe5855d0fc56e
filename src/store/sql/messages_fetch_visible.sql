-- messages_fetch_visible: the next batch after a cursor, in position order, and only below the
-- snapshot's xmin (DESIGN §3). Every transaction with an id below xmin has ended, so no row can
-- still appear below what this returns: a transaction that took a lower id but commits late is
-- waited for, never skipped. The row comparison walks the primary key. Columns are qualified;
-- ORDER BY names the xid8 column, not the text alias.
--
-- One read serves every group of a relay process whose cursor stands there (shared reads,
-- relay/tail.rs), so it is fenced by all their leases at once: $4 group names, $6 their
-- epochs, $5 the owner. `leased` lists those still held (one row of groups, one primary-key
-- lookup each); a group missing from it lost its lease (a pause, a replay, a takeover) and
-- stands by at once. There is always one row: with nothing visible past the cursor its message
-- columns are NULL.
SELECT l.leased,
       m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM (SELECT coalesce(array_agg(g.name), '{}') AS leased
          FROM outbox.consumer_groups g
          JOIN unnest($4::text[], $6::bigint[]) AS h(name, epoch)
            ON h.name = g.name AND h.epoch = g.lease_epoch
         WHERE g.lease_owner = $5) AS l
  LEFT JOIN LATERAL (
        SELECT v.tx_id, v.seq, v.id, v.topic, v.key, v.schema_version, v.payload, v.headers,
               v.created_at
          FROM outbox.messages v
         WHERE (v.tx_id, v.seq) > ($1::text::xid8, $2)
           AND v.tx_id < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY v.tx_id, v.seq
         LIMIT $3
       ) AS m ON true
 ORDER BY m.tx_id, m.seq
