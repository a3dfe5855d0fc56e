-- deliveries_dead_retry: `outbox-relay dead retry`, through outbox.retry_dead (migration 0009):
-- the dead letters matching the filters (each NULL = any) become due now, attempts kept.
SELECT r.group_name, r.message_id, r.topic, r.key,
       r.message_tx_id::text AS tx_id_text, r.message_seq,
       r.attempts, r.last_error, r.first_failed_at, r.updated_at
  FROM outbox.retry_dead($1, $2, $3, $4) AS r
