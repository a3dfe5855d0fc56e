-- consumer_groups_lease_acquire: takes a group row's lease when it is free, expired, or ours,
-- the group is not paused, and the row is split into $4 partitions as the relay expects (a
-- relay left running across `groups repartition`, configured with the old count, takes no row
-- of the new split, whose hash it would filter by the wrong modulus; nor a retired row).
-- Every acquisition bumps lease_epoch, which fences the previous holder in Redis too
-- (DESIGN §6). Expiry uses the database clock, so relays on hosts with skewed clocks agree on
-- it. One row while the group row exists: the epoch, the cursor to resume from and the replay
-- generation (see migration 0009) when taken, NULLs when not; and, read before the update,
-- what refused it (paused, retired, the stored partition count, the holder).
WITH current AS (
    SELECT g.paused, g.retired, g.partitions, g.lease_owner
      FROM outbox.consumer_groups g
     WHERE g.name = $1
), taken AS (
    UPDATE outbox.consumer_groups g
       SET lease_owner = $2,
           lease_expires_at = now() + make_interval(secs => $3::double precision / 1000),
           lease_epoch = g.lease_epoch + 1,
           updated_at = now()
     WHERE g.name = $1
       AND NOT g.paused
       AND NOT g.retired
       AND g.partitions = $4
       AND (g.lease_owner IS NULL OR g.lease_expires_at < now() OR g.lease_owner = $2)
    RETURNING g.lease_epoch, g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq,
              g.replay_generation
)
SELECT t.lease_epoch, t.cursor_tx_id_text, t.cursor_seq, t.replay_generation,
       c.paused, c.retired, c.partitions, c.lease_owner
  FROM current c
  LEFT JOIN taken t ON true
