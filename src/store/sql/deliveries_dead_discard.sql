-- deliveries_dead_discard: `outbox-relay dead discard`, through outbox.discard_dead (migration
-- 0009): deletes the dead letters matching the filters (each NULL = any; the CLI asks for
-- --all before it passes no filter, which is $5). The outbox row itself stays until prune.
SELECT r.group_name, r.message_id, r.topic, r.key,
       r.message_tx_id::text AS tx_id_text, r.message_seq,
       r.attempts, r.last_error, r.first_failed_at, r.updated_at
  FROM outbox.discard_dead($1, $2, $3, $4, $5) AS r
