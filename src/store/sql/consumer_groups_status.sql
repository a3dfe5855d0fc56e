-- consumer_groups_status: per group, where its cursor is and what lies past it. One range scan
-- of the primary key from each cursor (cost grows with the lag, not the table): how many
-- messages, how many of those are committed but held back by an older open transaction
-- (tx_id at or above the snapshot xmin), and when the oldest of them was written.
-- cursor_ahead: the cursor names a transaction id the server has not reached yet, as after a
-- dump/restore into a new cluster; such a group would wait forever.
SELECT g.name,
       g.cursor_tx_id::text AS cursor_tx_id_text,
       g.cursor_seq,
       g.paused,
       g.lease_owner,
       g.lease_epoch,
       g.lease_expires_at,
       lag.messages,
       lag.held_back,
       lag.oldest_created_at,
       g.cursor_tx_id >= pg_snapshot_xmax(pg_current_snapshot()) AS cursor_ahead
  FROM outbox.consumer_groups g
 CROSS JOIN LATERAL (
        SELECT count(*) AS messages,
               count(*) FILTER (WHERE m.tx_id >= pg_snapshot_xmin(pg_current_snapshot())) AS held_back,
               min(m.created_at) AS oldest_created_at
          FROM outbox.messages m
         WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
       ) AS lag
 WHERE $1::text IS NULL OR g.name = $1
 ORDER BY g.name
