-- deliveries_parked: the ordering keys that have a retrying or blocked message in the group
-- (NULL stands for unkeyed messages), with how long until the key's soonest retry is due, in
-- ms on the database clock (negative: overdue). The relay keeps this set in memory while it
-- holds the lease and re-reads it periodically, so operators' changes show.
SELECT d.message_key,
       (extract(epoch FROM min(d.next_attempt_at) FILTER (WHERE d.status = 'retrying') - now())
        * 1000)::double precision AS due_in_ms
  FROM outbox.deliveries d
 WHERE d.group_name = $1 AND d.status IN ('retrying', 'blocked')
 GROUP BY d.message_key
