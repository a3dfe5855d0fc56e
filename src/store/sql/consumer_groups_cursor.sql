-- consumer_groups_cursor: a group's cursor and lease owner, nothing else (cheap enough to poll,
-- unlike consumer_groups_status, whose lag count scans everything past the cursor).
SELECT g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq, g.lease_owner
  FROM outbox.consumer_groups g
 WHERE g.name = $1
