-- messages_count_between: what a replay or reset moves the cursor over, per topic: the
-- messages in the position range ($1:$2, $3:$4], and how many of them have a delivery row in
-- group $5 (those keep their retrying/blocked/dead state; a replay does not send them). One
-- range scan of the primary key.
SELECT m.topic,
       count(*) AS messages,
       count(d.message_id) AS with_delivery_row
  FROM outbox.messages m
  LEFT JOIN outbox.deliveries d ON outbox.group_of(d.group_name) = $5 AND d.message_id = m.id
 WHERE (m.tx_id, m.seq) > ($1::text::xid8, $2)
   AND (m.tx_id, m.seq) <= ($3::text::xid8, $4)
 GROUP BY m.topic
 ORDER BY m.topic
