-- deliveries_recorded_through: the highest position with a delivery row in the group. Read
-- when a relay takes the lease: batches past it cannot hold recorded failures, so only a
-- re-read below it needs deliveries_known.
SELECT d.message_tx_id::text AS tx_id_text, d.message_seq
  FROM outbox.deliveries d
 WHERE d.group_name = $1
 ORDER BY d.message_tx_id DESC, d.message_seq DESC
 LIMIT 1
