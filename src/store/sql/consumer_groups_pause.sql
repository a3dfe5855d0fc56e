-- consumer_groups_pause: `groups pause|resume`. Pausing also takes the lease away, so the relay
-- holding it stops at its next fenced update (it may finish the batch in flight; its cursor
-- update then matches nothing and the batch is read again after resume, which the Redis
-- duplicate filter makes harmless) and no relay takes it while paused. Returns the state
-- before, so the command can say what changed (one row per partition of a partitioned group).
WITH before AS (
    SELECT g.name, g.paused, g.lease_owner
      FROM outbox.consumer_groups g
     WHERE outbox.group_of(g.name) = $1 AND NOT g.retired
       FOR UPDATE
)
UPDATE outbox.consumer_groups g
   SET paused = $2,
       lease_owner = CASE WHEN $2 THEN NULL ELSE g.lease_owner END,
       lease_expires_at = CASE WHEN $2 THEN NULL ELSE g.lease_expires_at END,
       updated_at = now()
  FROM before b
 WHERE g.name = b.name
RETURNING b.paused AS was_paused, b.lease_owner AS previous_owner
