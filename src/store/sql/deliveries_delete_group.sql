-- deliveries_delete_group: `groups reset` forgets the group's retry state: every retrying,
-- blocked and dead delivery row of group $1 goes. Returns the deleted rows' statuses, counted.
WITH deleted AS (
    DELETE FROM outbox.deliveries d
     WHERE outbox.group_of(d.group_name) = $1
    RETURNING d.status
)
SELECT x.status, count(*) AS deliveries
  FROM deleted x
 GROUP BY x.status
