-- deliveries_dead_discard: deletes dead letters matching the filters (each NULL = any). The
-- message counts as handled for that group from then on; the outbox row itself stays.
DELETE FROM outbox.deliveries d
 USING outbox.messages m
 WHERE m.id = d.message_id
   AND d.status = 'dead'
   AND ($1::text IS NULL OR d.group_name = $1)
   AND ($2::text IS NULL OR m.topic = $2)
   AND ($3::timestamptz IS NULL OR d.first_failed_at >= $3)
   AND ($4::uuid IS NULL OR d.message_id = $4)
RETURNING d.group_name, d.message_id, m.topic, m.key,
          d.message_tx_id::text AS tx_id_text, d.message_seq,
          d.attempts, d.last_error, d.first_failed_at, d.updated_at
