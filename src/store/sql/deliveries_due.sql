-- deliveries_due: retries whose time has come, oldest position first, with their messages.
-- Due means next_attempt_at <= the database clock (the same clock that scheduled them).
-- Fenced by the lease ($3 owner, $4 epoch) like messages_fetch_visible: a relay that lost its
-- lease reads nothing.
SELECT d.attempts,
       m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id
 WHERE d.group_name = $1 AND d.status = 'retrying' AND d.next_attempt_at <= now()
   AND EXISTS (SELECT 1 FROM outbox.consumer_groups g
                WHERE g.name = $1 AND g.lease_owner = $3 AND g.lease_epoch = $4)
 ORDER BY d.message_tx_id, d.message_seq
 LIMIT $2
