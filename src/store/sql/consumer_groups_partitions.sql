-- consumer_groups_partitions: how a group is stored: how many partitions its rows say it has,
-- and how many rows say so (no row: the group is new). More than one line means rows of two
-- partitionings, which the relay refuses like any other mismatch.
SELECT g.partitions, count(*) AS row_count
  FROM outbox.consumer_groups g
 WHERE outbox.group_of(g.name) = $1 AND NOT g.retired
 GROUP BY g.partitions
 ORDER BY g.partitions
