-- consumer_groups_ensure_partitions: creates the missing rows `<group>/0` … `<group>/<N-1>`
-- of a group split into $2 partitions, each a cursor and lease of its own; existing rows are
-- kept. $3 ("--from-now") as in consumer_groups_ensure: every new row starts below the oldest
-- transaction that may still be running.
INSERT INTO outbox.consumer_groups AS g (name, partitions, partition, cursor_tx_id, cursor_seq)
SELECT $1 || '/' || p, $2, p,
       CASE WHEN $3
            THEN (pg_snapshot_xmin(pg_current_snapshot())::text::numeric - 1)::text::xid8
            ELSE '0'::xid8 END,
       CASE WHEN $3 THEN 9223372036854775807 ELSE 0 END
  FROM generate_series(0, $2 - 1) AS p
ON CONFLICT (name) DO NOTHING
RETURNING g.name
