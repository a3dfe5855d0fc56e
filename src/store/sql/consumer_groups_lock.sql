-- consumer_groups_lock: a group's cursor, its row locked until the transaction ends, so a replay
-- or reset counts what it moves over and moves the cursor with no relay advance or prune batch
-- in between (both wait for the lock; a relay waits at most that long).
SELECT g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq, g.lease_owner
  FROM outbox.consumer_groups g
 WHERE g.name = $1
   FOR UPDATE
