-- messages_held_back: is a committed message past the cursor waiting for an older open
-- transaction (tx_id at or above the snapshot xmin)? Also says whether the cursor lies ahead
-- of every transaction id the server has handed out (after a dump/restore into a new cluster).
SELECT EXISTS (
           SELECT 1 FROM outbox.messages m
            WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
              AND m.tx_id >= pg_snapshot_xmin(pg_current_snapshot())
       ) AS held_back,
       $1::text::xid8 >= pg_snapshot_xmax(pg_current_snapshot()) AS cursor_ahead,
       pg_snapshot_xmax(pg_current_snapshot())::text AS next_tx_id
