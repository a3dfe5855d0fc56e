-- deliveries_dead_retry: dead letters matching the filters (each NULL = any) become due now,
-- attempts kept: each gets one more attempt, then is dead again if it fails.
UPDATE outbox.deliveries d
   SET status = 'retrying', next_attempt_at = now(), updated_at = now()
  FROM outbox.messages m
 WHERE m.id = d.message_id
   AND d.status = 'dead'
   AND ($1::text IS NULL OR d.group_name = $1)
   AND ($2::text IS NULL OR m.topic = $2)
   AND ($3::timestamptz IS NULL OR d.first_failed_at >= $3)
   AND ($4::uuid IS NULL OR d.message_id = $4)
RETURNING d.group_name, d.message_id, m.topic, m.key,
          d.message_tx_id::text AS tx_id_text, d.message_seq,
          d.attempts, d.last_error, d.first_failed_at, d.updated_at
