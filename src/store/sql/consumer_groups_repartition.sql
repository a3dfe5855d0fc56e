-- consumer_groups_repartition: the rows of group $1 split into $2 partitions (`$1` alone when
-- $2 = 1, else `$1/0` … `$1/<$2-1>`), every one at cursor ($3, $4), paused as $5, lease-free.
-- A row that exists keeps its lease epoch (its Redis watermarks hold it); one revived from
-- retirement gets replay generation + 1, so the marks it appends sort above those it left.
INSERT INTO outbox.consumer_groups AS g
       (name, partitions, partition, cursor_tx_id, cursor_seq, paused)
SELECT CASE WHEN $2 = 1 THEN $1 ELSE $1 || '/' || p END, $2,
       CASE WHEN $2 = 1 THEN NULL ELSE p END, $3::text::xid8, $4, $5
  FROM generate_series(0, $2 - 1) AS p
    ON CONFLICT (name) DO UPDATE
   SET partitions = excluded.partitions,
       partition = excluded.partition,
       cursor_tx_id = excluded.cursor_tx_id,
       cursor_seq = excluded.cursor_seq,
       paused = excluded.paused,
       replay_generation = g.replay_generation + CASE WHEN g.retired THEN 1 ELSE 0 END,
       retired = false,
       lease_owner = NULL,
       lease_expires_at = NULL,
       updated_at = now()
RETURNING g.name
