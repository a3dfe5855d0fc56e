-- deliveries_due: retries whose time has come, oldest position first, with their messages.
-- Due means next_attempt_at <= the database clock (the same clock that scheduled them).
SELECT d.attempts,
       m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id
 WHERE d.group_name = $1 AND d.status = 'retrying' AND d.next_attempt_at <= now()
 ORDER BY d.message_tx_id, d.message_seq
 LIMIT $2
