-- deliveries_stuck: `outbox-relay stuck`, read from the view operators use in psql
-- (outbox.stuck, migration 0009): every retrying, blocked or dead delivery, filtered by group
-- and topic (NULL = any), in group and position order.
SELECT s.group_name, s.message_id, s.status, s.position, s.topic, s.key,
       s.payload::text AS payload_text, s.attempts, s.last_error, s.next_attempt_at,
       s.first_failed_at, s.blocked_by
  FROM outbox.stuck s
 WHERE ($1::text IS NULL OR s.group_name = $1)
   AND ($2::text IS NULL OR s.topic = $2)
 ORDER BY s.group_name, s.message_tx_id, s.message_seq
 LIMIT $3
