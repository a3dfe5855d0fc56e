-- messages_not_reached: for `groups repartition`, the messages up to position ($2, $3) (the
-- furthest cursor of the group's partitions) that their own partition has not reached yet
-- and that have no delivery row there, in position order. Each partition reads from its own
-- cursor through the primary key; partition_of filters the others' messages out.
SELECT m.id, m.key, m.topic
  FROM outbox.consumer_groups g
 CROSS JOIN LATERAL (
        SELECT m.id, m.key, m.topic, m.tx_id, m.seq
          FROM outbox.messages m
         WHERE (m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
           AND (m.tx_id, m.seq) <= ($2::text::xid8, $3)
           AND (g.partition IS NULL OR outbox.partition_of(m.key, m.id, g.partitions) = g.partition)
       ) AS m
 WHERE outbox.group_of(g.name) = $1 AND NOT g.retired
   AND NOT EXISTS (SELECT 1 FROM outbox.deliveries d
                    WHERE d.group_name = g.name AND d.message_id = m.id)
 ORDER BY m.tx_id, m.seq
