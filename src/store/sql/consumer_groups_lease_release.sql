-- consumer_groups_lease_release: on shutdown, so a standby takes over at once instead of
-- after the lease time. The epoch stays: the next holder bumps it.
UPDATE outbox.consumer_groups g
   SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE g.name = $1 AND g.lease_owner = $2 AND g.lease_epoch = $3
