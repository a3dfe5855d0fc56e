-- consumer_groups_move_cursor: `replay` / `groups reset`. Sets the cursor, bumps the replay
-- generation (so the Redis duplicate filter lets the re-sent entries through, once), and takes
-- the lease away: a running relay's next fenced update matches nothing, it stands by, and takes
-- the lease again at once, reading the new cursor and generation. Every partition of a
-- partitioned group moves; with $4 (a replay, which only moves back) a partition whose cursor
-- is before the target already is left alone — cursor, generation and lease: a new generation
-- there would let entries it appended past its cursor without committing them through twice.
UPDATE outbox.consumer_groups g
   SET cursor_tx_id = $2::text::xid8,
       cursor_seq = $3,
       replay_generation = g.replay_generation + 1,
       lease_owner = NULL,
       lease_expires_at = NULL,
       updated_at = now()
 WHERE outbox.group_of(g.name) = $1
   AND NOT g.retired
   AND NOT ($4 AND (g.cursor_tx_id, g.cursor_seq) < ($2::text::xid8, $3))
RETURNING g.replay_generation
