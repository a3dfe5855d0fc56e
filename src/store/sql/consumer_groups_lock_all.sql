-- consumer_groups_lock_all: every row of a group (its partitions, and rows a repartition
-- retired), locked until the transaction ends, for `groups repartition`.
SELECT g.name, g.partition, g.partitions, g.cursor_tx_id::text AS cursor_tx_id_text, g.cursor_seq,
       coalesce(g.lease_expires_at > now(), false) AS leased, g.lease_owner, g.paused, g.retired,
       g.replay_generation
  FROM outbox.consumer_groups g
 WHERE outbox.group_of(g.name) = $1
 ORDER BY g.name
   FOR UPDATE
