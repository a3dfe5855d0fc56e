-- consumer_groups_move_cursor: `replay` / `groups reset`. Sets the cursor, bumps the replay
-- generation (so the Redis duplicate filter lets the re-sent entries through, once), and takes
-- the lease away: a running relay's next fenced update matches nothing, it stands by, and takes
-- the lease again at once, reading the new cursor and generation.
UPDATE outbox.consumer_groups g
   SET cursor_tx_id = $2::text::xid8,
       cursor_seq = $3,
       replay_generation = g.replay_generation + 1,
       lease_owner = NULL,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE g.name = $1
RETURNING g.replay_generation
