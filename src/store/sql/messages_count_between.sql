-- messages_count_between: what a replay or reset moves group $1's cursor over, per topic. For
-- each of its rows that moves to the target ($2:$3; with $4, a replay, rows already before it
-- stay): the messages between the row's cursor and the target, in either direction, of the
-- row's own partition (all of them for an unpartitioned group); and how many of those have a
-- delivery row (they keep their retrying/blocked/dead state; a replay does not send them). One
-- range scan of the primary key per row.
SELECT m.topic,
       count(*) AS messages,
       count(d.message_id) AS with_delivery_row
  FROM outbox.consumer_groups g
  JOIN outbox.messages m
    ON ((m.tx_id, m.seq) > (g.cursor_tx_id, g.cursor_seq)
        AND (m.tx_id, m.seq) <= ($2::text::xid8, $3)
        OR (m.tx_id, m.seq) > ($2::text::xid8, $3)
        AND (m.tx_id, m.seq) <= (g.cursor_tx_id, g.cursor_seq))
   AND (g.partition IS NULL OR outbox.partition_of(m.key, m.id, g.partitions) = g.partition)
  LEFT JOIN outbox.deliveries d ON d.group_name = g.name AND d.message_id = m.id
 WHERE outbox.group_of(g.name) = $1
   AND NOT g.retired
   AND NOT ($4 AND (g.cursor_tx_id, g.cursor_seq) < ($2::text::xid8, $3))
 GROUP BY m.topic
 ORDER BY m.topic
