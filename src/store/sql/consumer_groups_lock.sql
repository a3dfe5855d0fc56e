-- consumer_groups_lock: a group's cursor, its row locked until the transaction ends, so a replay
-- or reset counts what it moves over and moves the cursor with no relay advance or prune batch
-- in between (both wait for the lock; a relay waits at most that long). A partitioned group has
-- one row per partition: all are locked, the furthest cursor first.
SELECT g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq, g.lease_owner
  FROM outbox.consumer_groups g
 WHERE outbox.group_of(g.name) = $1 AND NOT g.retired
 ORDER BY g.cursor_tx_id DESC, g.cursor_seq DESC
   FOR UPDATE
