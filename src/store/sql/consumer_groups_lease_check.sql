-- consumer_groups_lease_check: true when the caller still holds the group's lease. Run first
-- in a transaction that writes delivery state: FOR SHARE makes a concurrent takeover (an
-- UPDATE of this row) wait until that transaction ends, so what it writes is fenced exactly
-- like a cursor update.
SELECT true
  FROM outbox.consumer_groups g
 WHERE g.name = $1 AND g.lease_owner = $2 AND g.lease_epoch = $3
   FOR SHARE
