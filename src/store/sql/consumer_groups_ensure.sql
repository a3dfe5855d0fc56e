-- consumer_groups_ensure: creates a group's row on its first run; an existing row is kept.
-- $2 = false: the cursor starts before every message.
-- $2 = true ("--from-now"): it starts just below the oldest transaction that may still be
-- running (the snapshot xmin), so every message of a transaction still in flight is delivered
-- and those of transactions that ended before xmin are not.
INSERT INTO outbox.consumer_groups AS g (name, cursor_tx_id, cursor_seq)
SELECT $1,
       CASE WHEN $2
            THEN (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8
            ELSE '0'::xid8 END,
       CASE WHEN $2 THEN 9223372036854775807 ELSE 0 END
ON CONFLICT (name) DO NOTHING
RETURNING g.name
