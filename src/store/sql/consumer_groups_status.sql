-- consumer_groups_status: `outbox-relay status` and `groups list`, read from the view operators
-- use in psql (outbox.group_status, migration 0009, which explains each column and its cost).
SELECT s.group_name,
       s.row_name,
       s.partition,
       s.partitions,
       s.cursor_tx_id::text AS cursor_tx_id_text,
       s.cursor_seq,
       s.paused,
       s.lease_owner,
       s.lease_epoch,
       s.lease_expires_at,
       s.replay_generation,
       s.lag_messages,
       s.lag_estimated,
       s.lag_seconds,
       s.oldest_undelivered_at,
       s.held_back,
       s.retrying,
       s.blocked,
       s.dead,
       s.cursor_ahead
  FROM outbox.group_status s
 WHERE $1::text IS NULL OR s.group_name = $1
 ORDER BY s.group_name, s.partition
