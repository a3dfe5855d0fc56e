-- consumer_groups_lease_renew: the heartbeat of an idle relay (a busy one renews with every
-- cursor_advance). Matches nothing once another relay took the lease or the group was paused.
UPDATE outbox.consumer_groups g
   SET lease_expires_at = now() + make_interval(secs => $4::double precision / 1000),
       updated_at = now()
 WHERE g.name = $1 AND g.lease_owner = $2 AND g.lease_epoch = $3 AND NOT g.paused
