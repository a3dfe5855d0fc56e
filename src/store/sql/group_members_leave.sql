-- group_members_leave: member $2 leaves group $1 (a clean stop, after releasing its leases):
-- the others take its partitions at their next heartbeat, without waiting for it to expire.
DELETE FROM outbox.group_members m WHERE m.group_name = $1 AND m.member = $2
