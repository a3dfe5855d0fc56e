-- consumer_groups_lease_acquire: takes a group's lease when it is free, expired, or ours, and
-- the group is not paused. Every acquisition bumps lease_epoch, which fences the previous
-- holder in Redis too (DESIGN §6). Expiry uses the database clock, so relays on hosts with
-- skewed clocks agree on it. Returns the epoch, the cursor to resume from, and the replay
-- generation (see migration 0009).
UPDATE outbox.consumer_groups g
   SET lease_owner = $2,
       lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
       lease_epoch = g.lease_epoch + 1,
       updated_at = now()
 WHERE g.name = $1
   AND NOT g.paused
   AND NOT g.retired
   AND (g.lease_owner IS NULL OR g.lease_expires_at < now() OR g.lease_owner = $2)
RETURNING g.lease_epoch, g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq,
          g.replay_generation
