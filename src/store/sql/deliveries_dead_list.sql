-- deliveries_dead_list: dead letters matching the operator's filters (each NULL = any), oldest
-- failure first, with what is needed to decide: topic, key, position, attempts, last error.
SELECT outbox.group_of(d.group_name) AS group_name, d.message_id, m.topic, m.key,
       d.message_tx_id::text AS tx_id_text, d.message_seq,
       d.attempts, d.last_error, d.first_failed_at, d.updated_at
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id
 WHERE d.status = 'dead'
   AND ($1::text IS NULL OR outbox.group_of(d.group_name) = $1)
   AND ($2::text IS NULL OR m.topic = $2)
   AND ($3::timestamptz IS NULL OR d.first_failed_at >= $3)
   AND ($4::uuid IS NULL OR d.message_id = $4)
 ORDER BY d.first_failed_at, d.message_tx_id, d.message_seq
 LIMIT $5
