-- deliveries_dead_letter_pending: dead deliveries whose dead-letter copy is still to be
-- appended (a crash between recording the dead row and the append, or a dead-letter stream
-- key of the wrong type), with their messages, oldest first. Fenced by the lease like
-- deliveries_due ($3 owner, $4 epoch): a relay that lost it gets nothing.
SELECT d.attempts, d.last_error,
       m.tx_id::text AS tx_id_text, m.seq, m.id, m.topic, m.key, m.schema_version,
       m.payload::text AS payload_text, m.headers::text AS headers_text, m.created_at
  FROM outbox.deliveries d
  JOIN outbox.messages m ON m.id = d.message_id
 WHERE d.group_name = $1 AND d.status = 'dead' AND d.dead_letter_pending
   AND EXISTS (SELECT 1 FROM outbox.consumer_groups g
                WHERE g.name = $1 AND g.lease_owner = $3 AND g.lease_epoch = $4)
 ORDER BY d.message_tx_id, d.message_seq
 LIMIT $2
