-- deliveries_move: `groups repartition` moves each delivery row of group $1 ($2 message ids)
-- to its message's new partition row ($3), keeping its state.
UPDATE outbox.deliveries d
   SET group_name = s.row_name
  FROM UNNEST($2::uuid[], $3::text[]) AS s (message_id, row_name)
 WHERE outbox.group_of(d.group_name) = $1 AND d.message_id = s.message_id
   AND d.group_name <> s.row_name
