-- deliveries_of_group: every delivery row of a group's partitions (id, key, status, its row,
-- whether its dead-letter copy is still to be appended), for `groups repartition`, which
-- moves each to its message's new partition.
SELECT d.message_id, d.message_key, d.status, d.group_name, d.dead_letter_pending
  FROM outbox.deliveries d
 WHERE outbox.group_of(d.group_name) = $1
 ORDER BY d.message_tx_id, d.message_seq
