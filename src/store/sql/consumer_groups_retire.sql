-- consumer_groups_retire: the rows of group $1 not among $2 (a repartition left them out)
-- are retired: no relay takes them, no view shows them, prune does not wait for them.
UPDATE outbox.consumer_groups g
   SET retired = true, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
 WHERE outbox.group_of(g.name) = $1 AND NOT g.retired AND NOT g.name = ANY($2::text[])
